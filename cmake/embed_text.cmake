# Makes a C++ source that holds a text file's bytes (cmake -DIN=file -DOUT=file.cpp
# -DNAME=symbol -DNAMESPACE=ns -P embed_text.cmake): `extern const char NAME[]` (NUL-ended)
# and `extern const size_t NAMESize` in that namespace. Run by the build, so an edit of the
# file rebuilds what holds it.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR size "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp" "// Generated from ${IN} by cmake/embed_text.cmake; do not edit.\n#include <cstddef>\nnamespace ${NAMESPACE} {\nextern const unsigned char ${NAME}[];\nextern const size_t ${NAME}Size;\nconst unsigned char ${NAME}[] = {\n${bytes}0x00};\nconst size_t ${NAME}Size = ${size};\n}  // namespace ${NAMESPACE}\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
