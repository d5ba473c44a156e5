// A planted UBSan finding: indexes a static array out of bounds. The debug preset builds it with
// kiln's sanitizer flags, and its test passes only if UBSan reports the index and stops the
// process, so that a finding anywhere in the suite fails its test instead of printing and passing.
#include <cstdio>
#include <cstdlib>

namespace {
int table[4] = {1, 2, 3, 4};
}

int main(int argc, char** argv) {
  const int index = argc > 1 ? std::atoi(argv[1]) : 0;  // from the command line: not foldable
  std::printf("table[%d] = %d\n", index, table[index]);
  std::printf("still running after the finding\n");
  return 0;
}
