// The reference store (internal): the values this process keeps for others, the handles it
// holds to values kept elsewhere, and the weighted reference counting between them. A handle
// carries weight (core.hpp); copying it to another process splits the weight, and the owner
// frees a value when all the weight it gave out has come back. Futures, channels, remote
// objects and SharedArrays all name their state with a RefId kept here.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "vscale/detail/core.hpp"

namespace vscale::detail {

// Weight a new handle carries; halved at each forwarding, refilled from the owner when it runs
// out. 2^20 keeps the owner's signed total far from overflow however often a handle is sent.
inline constexpr std::uint64_t kInitialWeight = std::uint64_t(1) << 20;

class RefStore {
 public:
  /// How the store gets more weight from `owner` for a handle that has run out (blocks until
  /// the owner has it, so that our own returned weight cannot reach it first; throws).
  using AskWeight = std::function<void(const RefId& id, std::uint64_t weight)>;
  RefStore(int self, AskWeight ask) : self_(self), ask_(std::move(ask)) {}

  /// Owner: `weight` more is out there for `id` (a new value, or weight asked for). The entry
  /// is a pending placeholder if the call that makes the value has not arrived yet.
  std::shared_ptr<FutureCore> add(const RefId& id, std::uint64_t weight);
  /// Owner: `weight` came back; the value is freed when none is out and no local handle holds it.
  void release(const RefId& id, std::uint64_t weight);
  /// Owner: the value kept under `id`, or null.
  std::shared_ptr<FutureCore> find(const RefId& id) const;
  /// Owner: the value kept under `id`, or a pending placeholder for it (someone holding
  /// weight asks, so the call that makes it is still on its way).
  std::shared_ptr<FutureCore> find_or_placeholder(const RefId& id);
  /// A handle leaves this process: the weight that travels with it.
  WireRef export_ref(const std::shared_ptr<FutureCore>& core);
  /// A handle arrives: the one local core for its value (the owner's own, or a proxy).
  std::shared_ptr<FutureCore> import_ref(const WireRef& w);
  /// A proxy for a value owned elsewhere is being destroyed: forget it.
  void forget_import(const RefId& id);
  /// `handle` (use count 1) is the only handle here to its value: true, and a copy that
  /// arrives later gets a proxy of its own. False if another handle appeared meanwhile.
  bool claim_sole(const std::shared_ptr<FutureCore>& handle);
  /// Values kept here for others.
  std::size_t size() const;

 private:
  // Weight is signed: messages about a value can reach its owner before the call that makes
  // it (they travel on different rings), so an entry may start as a placeholder that owes
  // weight, and the call settles it.
  struct Entry {
    std::shared_ptr<FutureCore> core;
    std::int64_t weight = 0;
  };
  using Map = std::unordered_map<RefId, Entry, RefIdHash>;
  Entry& entry(const RefId& id);  // with m_ held: find, or create a placeholder
  void settle(Map::iterator it, std::shared_ptr<FutureCore>& dropped);

  int self_;
  AskWeight ask_;
  mutable std::mutex m_;
  Map kept_;
  std::mutex imports_m_;
  std::unordered_map<RefId, std::weak_ptr<FutureCore>, RefIdHash> imports_;  // proxies held here
};

}  // namespace vscale::detail
