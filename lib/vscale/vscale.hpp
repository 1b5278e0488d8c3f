// vscale: the only include you need.
#pragma once

#include "vscale/errors.hpp"
#include "vscale/serialize.hpp"
#include "vscale/cluster.hpp"
#include "vscale/placement.hpp"
#include "vscale/future.hpp"
#include "vscale/interrupt.hpp"
#include "vscale/remotecall.hpp"
#include "vscale/distributed_for.hpp"
#include "vscale/remote_channel.hpp"
#include "vscale/remote_value.hpp"
#include "vscale/worker_pool.hpp"
#include "vscale/pmap_options.hpp"
#include "vscale/pmap.hpp"
#include "vscale/shared_array.hpp"
#include "vscale/barrier.hpp"
