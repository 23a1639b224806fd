// A temporary directory for one test, removed with everything in it at the end.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <string>

namespace enlighten::test {

struct TempDir {
    std::string path;
    explicit TempDir(const char* prefix = "enl-test") {
        std::string tmpl = std::string("/tmp/") + prefix + "-XXXXXX";
        const char* p = ::mkdtemp(tmpl.data());
        if (p == nullptr) std::abort();
        path = p;
    }
    ~TempDir() { std::system(("rm -rf " + path).c_str()); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

}  // namespace enlighten::test
