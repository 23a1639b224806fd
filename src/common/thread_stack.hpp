// The stack size of the VMM's threads.
#pragma once

#include <pthread.h>

#include <cstddef>

namespace enlighten {

// 1 MiB instead of glibc's 8 MiB default (the stack rlimit). Nothing in the VMM recurses
// deeply (nlohmann::json parses and destroys iteratively; request bodies are size-limited;
// api_test checks deeply nested bodies on such threads). And a mapping this small cannot
// hold a 2 MiB-aligned range, so with transparent huge pages `always` a thread's first
// stack touch no longer pulls in a whole 2 MiB page: in the boot benchmark that one page
// was a third of the VMM's own memory.
inline constexpr size_t kThreadStackBytes = size_t{1} << 20;

// Makes kThreadStackBytes the default for every thread created afterwards (std::thread
// and std::jthread included). Call it before the first thread starts.
inline bool limit_thread_stacks(size_t bytes = kThreadStackBytes) {
    pthread_attr_t attr;
    if (::pthread_attr_init(&attr) != 0) return false;
    const bool ok = ::pthread_attr_setstacksize(&attr, bytes) == 0 && ::pthread_setattr_default_np(&attr) == 0;
    ::pthread_attr_destroy(&attr);
    return ok;
}

}  // namespace enlighten
