// The reference store: values kept for others, proxies held here, and their weights
// (ref_store.hpp).
#include "vscale/detail/ref_store.hpp"

namespace vscale::detail {

RefStore::Entry& RefStore::entry(const RefId& id) {
  auto [it, fresh] = kept_.try_emplace(id);
  if (fresh) {
    it->second.core = std::make_shared<FutureCore>();
    it->second.core->id = id;
  }
  return it->second;
}

void RefStore::settle(Map::iterator it, std::shared_ptr<FutureCore>& dropped) {
  if (it->second.weight == 0) {
    dropped = std::move(it->second.core);  // destroyed by the caller, outside the lock
    kept_.erase(it);
  }
}

std::shared_ptr<FutureCore> RefStore::add(const RefId& id, std::uint64_t weight) {
  std::shared_ptr<FutureCore> core, dropped;
  std::lock_guard lk(m_);
  Entry& e = entry(id);
  e.weight += static_cast<std::int64_t>(weight);
  core = e.core;
  settle(kept_.find(id), dropped);
  return core;
}

void RefStore::release(const RefId& id, std::uint64_t weight) {
  std::shared_ptr<FutureCore> dropped;
  std::lock_guard lk(m_);
  entry(id).weight -= static_cast<std::int64_t>(weight);
  settle(kept_.find(id), dropped);
}

std::shared_ptr<FutureCore> RefStore::find(const RefId& id) const {
  std::lock_guard lk(m_);
  auto it = kept_.find(id);
  return it == kept_.end() ? nullptr : it->second.core;
}

std::shared_ptr<FutureCore> RefStore::find_or_placeholder(const RefId& id) {
  std::lock_guard lk(m_);
  return entry(id).core;
}

WireRef RefStore::export_ref(const std::shared_ptr<FutureCore>& core) {
  if (core->id.owner == self_) {
    // We own it: mint fresh weight for the copy that leaves.
    std::lock_guard lk(m_);
    auto [it, fresh] = kept_.try_emplace(core->id, Entry{core, 0});
    it->second.weight += static_cast<std::int64_t>(kInitialWeight);
    return {core->id, kInitialWeight};
  }
  std::unique_lock lk(core->m);
  if (core->weight < 2) {
    // Out of weight to split (rare: 20 halvings): ask the owner for more.
    lk.unlock();
    ask_(core->id, kInitialWeight);
    lk.lock();
    core->weight += kInitialWeight;
  }
  std::uint64_t give = core->weight / 2;
  core->weight -= give;
  return {core->id, give};
}

std::shared_ptr<FutureCore> RefStore::import_ref(const WireRef& w) {
  if (w.id.owner == self_) {
    // Our own handles hold the core directly; the weight that came with this one goes back.
    std::shared_ptr<FutureCore> core, dropped;
    std::lock_guard lk(m_);
    Entry& e = entry(w.id);
    core = e.core;
    e.weight -= static_cast<std::int64_t>(w.weight);
    settle(kept_.find(w.id), dropped);
    return core;
  }
  std::lock_guard lk(imports_m_);
  auto& slot = imports_[w.id];
  if (auto core = slot.lock()) {
    std::lock_guard ck(core->m);
    core->weight += w.weight;
    return core;
  }
  auto core = std::make_shared<FutureCore>();
  core->id = w.id;
  core->weight = w.weight;
  slot = core;
  return core;
}

void RefStore::forget_import(const RefId& id) {
  std::lock_guard lk(imports_m_);
  auto it = imports_.find(id);
  if (it != imports_.end() && it->second.expired()) imports_.erase(it);
}

bool RefStore::claim_sole(const std::shared_ptr<FutureCore>& handle) {
  // Another handle could still come from the imports (a copy arriving from elsewhere): take
  // the core out of them, so that such a copy gets a core of its own.
  std::lock_guard lk(imports_m_);
  if (handle.use_count() != 1) return false;
  auto it = imports_.find(handle->id);
  if (it != imports_.end() && !it->second.owner_before(handle) && !handle.owner_before(it->second))
    imports_.erase(it);
  return true;
}

std::size_t RefStore::size() const {
  std::lock_guard lk(m_);
  return kept_.size();
}

}  // namespace vscale::detail
