// Host-side, torch-free page allocator used by leapdec.kv_cache.PagedKVCache.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace leapdec {

struct OutOfPages : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class PageAllocator {
 public:
  explicit PageAllocator(int64_t num_pages) {
    if (num_pages <= 0) throw std::invalid_argument("num_pages must be positive, got " + std::to_string(num_pages));
    refcount_.assign(num_pages, 0);
    free_.reserve(num_pages);
    for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
  }

  // n fresh pages with refcount 1, lowest ids first; all-or-nothing.
  std::vector<int32_t> allocate(int64_t n) {
    if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
    if (n > static_cast<int64_t>(free_.size())) {
      throw OutOfPages("out of KV-cache pages: need " + std::to_string(n) + ", " +
                       std::to_string(free_.size()) + " of " + std::to_string(refcount_.size()) +
                       " free (allocate a larger cache or free sequences)");
    }
    std::vector<int32_t> pages(free_.end() - n, free_.end());
    free_.resize(free_.size() - n);
    std::vector<int32_t> ordered(pages.rbegin(), pages.rend());
    for (int32_t p : ordered) refcount_[p] = 1;
    return ordered;
  }

  void share(const std::vector<int32_t>& pages) {
    for (int32_t p : pages) check_live(p, "share");
    for (int32_t p : pages) ++refcount_[p];
  }

  void release(const std::vector<int32_t>& pages) {
    std::vector<int32_t> left(refcount_);  // validate first so a bad call changes nothing
    for (int32_t p : pages) {
      check_live(p, "release");
      if (--left[p] < 0)
        throw std::invalid_argument("release: page " + std::to_string(p) + " released more often than held");
    }
    for (int32_t p : pages) {
      if (--refcount_[p] == 0) free_.push_back(p);
    }
  }

  int32_t refcount(int32_t page) const {
    check_range(page);
    return refcount_[page];
  }
  int64_t num_pages() const { return static_cast<int64_t>(refcount_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }

 private:
  void check_range(int32_t p) const {
    if (p < 0 || p >= static_cast<int64_t>(refcount_.size()))
      throw std::out_of_range("page id " + std::to_string(p) + " out of range [0, " +
                              std::to_string(refcount_.size()) + ")");
  }
  void check_live(int32_t p, const char* what) const {
    check_range(p);
    if (refcount_[p] <= 0)
      throw std::invalid_argument(std::string(what) + ": page " + std::to_string(p) + " is not allocated");
  }

  std::vector<int32_t> refcount_;
  std::vector<int32_t> free_;  // stack; top = next page handed out
};

}  // namespace leapdec
