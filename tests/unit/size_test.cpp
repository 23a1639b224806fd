#include "common/size.hpp"

#include <gtest/gtest.h>

using namespace enlighten;

TEST(ParseSize, PlainBytesAndUnits) {
    EXPECT_EQ(parse_size("1048576").value(), 1048576u);
    EXPECT_EQ(parse_size("512M").value(), 512 * MiB);
    EXPECT_EQ(parse_size("512MiB").value(), 512 * MiB);
    EXPECT_EQ(parse_size("2G").value(), 2 * GiB);
    EXPECT_EQ(parse_size("2g").value(), 2 * GiB);
    EXPECT_EQ(parse_size("4K").value(), 4 * KiB);
    EXPECT_EQ(parse_size("1T").value(), 1024 * GiB);
    EXPECT_EQ(parse_size("0").value(), 0u);
}

TEST(ParseSize, RejectsGarbage) {
    EXPECT_FALSE(parse_size(""));
    EXPECT_FALSE(parse_size("M"));
    EXPECT_FALSE(parse_size("-1G"));
    EXPECT_FALSE(parse_size("12X"));
    EXPECT_FALSE(parse_size("1.5G"));
    EXPECT_FALSE(parse_size("1GG"));
}

TEST(ParseSize, RejectsOverflow) {
    EXPECT_FALSE(parse_size("18446744073709551616"));
    EXPECT_FALSE(parse_size("99999999999T"));
    EXPECT_EQ(parse_size("18446744073709551615").value(), 18446744073709551615ULL);
}
