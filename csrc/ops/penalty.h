#pragma once
// The RDA penalties and the groups each one shrinks: the one table of this fact. Python reads it
// through rda_ext._C.penalties() (rda_ext.ops.GROUP_DIM), so no second copy exists.

#include <cstdint>
#include <string_view>

namespace rda_ext {

struct Penalty {
  std::string_view name;
  // The dim that x.norm(dim=...) reduces to give one norm per group; kEntries: every entry is a group.
  int64_t group_dim;
};

constexpr int64_t kEntries = -1;

inline constexpr Penalty kPenalties[] = {
    {"l1", kEntries},     // element-wise soft-thresholding: noisy entries
    {"l21_rows", 1},      // each row a group: outlying instances
    {"l21_cols", 0},      // each column a group: corrupted features
};

// The penalty of that name, or an error listing the valid names.
const Penalty& check_penalty(std::string_view name);

}  // namespace rda_ext
