// AML encodings checked byte for byte against ACPI 6.4 chapter 20 and §6.4 (resource
// descriptors). The expected bytes of the composite objects were also cross-checked against
// what `iasl -oa` (ACPICA 20200925, optimizations off) emits for the same ASL.
#include "platform/acpi/aml.hpp"

#include <cstdint>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

namespace enlighten::acpi::aml {
namespace {

using B = Bytes;

B ok(const Result<Bytes>& r) {
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    return r ? *r : B{};
}

B enc(const Node& node) { return ok(encode(node)); }

// ---- PkgLength (§20.2.4) ----

TEST(AmlPkgLength, OneByteUpTo63) {
    EXPECT_EQ(ok(pkg_length(1)), (B{0x01}));
    EXPECT_EQ(ok(pkg_length(63)), (B{0x3f}));
}

TEST(AmlPkgLength, TwoBytesFrom64To4095) {
    // Lead byte: bits 7:6 = 1 following byte, bits 3:0 = low nibble; then value >> 4.
    EXPECT_EQ(ok(pkg_length(64)), (B{0x40, 0x04}));
    EXPECT_EQ(ok(pkg_length(0x123)), (B{0x43, 0x12}));
    EXPECT_EQ(ok(pkg_length(4095)), (B{0x4f, 0xff}));
}

TEST(AmlPkgLength, ThreeAndFourBytes) {
    EXPECT_EQ(ok(pkg_length(4096)), (B{0x80, 0x00, 0x01}));
    EXPECT_EQ(ok(pkg_length(0xfffff)), (B{0x8f, 0xff, 0xff}));
    EXPECT_EQ(ok(pkg_length(0x100000)), (B{0xc0, 0x00, 0x00, 0x01}));
    EXPECT_EQ(ok(pkg_length(0x0fffffff)), (B{0xcf, 0xff, 0xff, 0xff}));
}

TEST(AmlPkgLength, RejectsValuesAbove28Bits) { EXPECT_FALSE(pkg_length(0x10000000).has_value()); }

TEST(AmlPkgLength, ForBodyCountsItsOwnBytes) {
    EXPECT_EQ(ok(pkg_length_for_body(0)), (B{0x01}));
    EXPECT_EQ(ok(pkg_length_for_body(62)), (B{0x3f}));           // 62 + 1 = 63
    EXPECT_EQ(ok(pkg_length_for_body(63)), (B{0x41, 0x04}));     // 63 + 2 = 65
    EXPECT_EQ(ok(pkg_length_for_body(4093)), (B{0x4f, 0xff}));   // 4093 + 2 = 4095
    EXPECT_EQ(ok(pkg_length_for_body(4094)), (B{0x81, 0x00, 0x01}));  // 4094 + 3 = 4097
    EXPECT_EQ(ok(pkg_length_for_body(0xffffc)), (B{0x8f, 0xff, 0xff}));
    EXPECT_EQ(ok(pkg_length_for_body(0xffffd)), (B{0xc1, 0x00, 0x00, 0x01}));  // + 4 = 0x100001
    EXPECT_FALSE(pkg_length_for_body(0x0ffffffc).has_value());
}

TEST(AmlPkgLength, BufferCrossingTheOneByteLimit) {
    // BufferOp PkgLength BufferSize(0A nn) bytes: 2 + 60 = 62 body bytes -> 1-byte PkgLength.
    const B small = enc(buffer(B(60, 0xaa)));
    ASSERT_EQ(small.size(), 1U + 1U + 2U + 60U);
    EXPECT_EQ((B{small[0], small[1], small[2], small[3]}), (B{0x11, 0x3f, 0x0a, 60}));
    // 2 + 61 = 63 body bytes -> 2-byte PkgLength of 65.
    const B big = enc(buffer(B(61, 0xaa)));
    ASSERT_EQ(big.size(), 1U + 2U + 2U + 61U);
    EXPECT_EQ((B{big[0], big[1], big[2], big[3], big[4]}), (B{0x11, 0x41, 0x04, 0x0a, 61}));
}

TEST(AmlPkgLength, LargeBufferUsesThreeBytes) {
    // BufferSize 5000 = 0B 88 13; body 3 + 5000 = 5003; + 3 = 5006 = 0x138E.
    const B out = enc(buffer(B(5000, 0)));
    ASSERT_EQ(out.size(), 1U + 3U + 5003U);
    EXPECT_EQ((B(out.begin(), out.begin() + 7)), (B{0x11, 0x8e, 0x38, 0x01, 0x0b, 0x88, 0x13}));
}

// ---- Names (§20.2.2) ----

TEST(AmlNames, NameSegIsPaddedWithUnderscores) {
    EXPECT_EQ(ok(name_seg("_SB")), (B{'_', 'S', 'B', '_'}));
    EXPECT_EQ(ok(name_seg("_S5")), (B{'_', 'S', '5', '_'}));
    EXPECT_EQ(ok(name_seg("A")), (B{'A', '_', '_', '_'}));
    EXPECT_EQ(ok(name_seg("VMBS")), (B{'V', 'M', 'B', 'S'}));
    EXPECT_EQ(ok(name_seg("C0_1")), (B{'C', '0', '_', '1'}));
}

TEST(AmlNames, NameSegRejectsBadNames) {
    for (const char* bad : {"", "ABCDE", "1ABC", "com1", "A-B", "A.B", "A B"}) {
        EXPECT_FALSE(name_seg(bad).has_value()) << bad;
    }
}

TEST(AmlNames, NameStrings) {
    EXPECT_EQ(ok(name_string("_HID")), (B{'_', 'H', 'I', 'D'}));
    EXPECT_EQ(ok(name_string("\\_SB")), (B{0x5c, '_', 'S', 'B', '_'}));
    // DualNamePrefix 0x2E.
    EXPECT_EQ(ok(name_string("\\_SB.VMBS")), (B{0x5c, 0x2e, '_', 'S', 'B', '_', 'V', 'M', 'B', 'S'}));
    EXPECT_EQ(ok(name_string("PCI0.ISA")), (B{0x2e, 'P', 'C', 'I', '0', 'I', 'S', 'A', '_'}));
    // MultiNamePrefix 0x2F, SegCount.
    EXPECT_EQ(ok(name_string("\\_SB.PCI0.ISA")),
              (B{0x5c, 0x2f, 0x03, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'I', 'S', 'A', '_'}));
    // ParentPrefixChar 0x5E.
    EXPECT_EQ(ok(name_string("^COM1")), (B{0x5e, 'C', 'O', 'M', '1'}));
    EXPECT_EQ(ok(name_string("^^A.B")), (B{0x5e, 0x5e, 0x2e, 'A', '_', '_', '_', 'B', '_', '_', '_'}));
    // RootChar followed by NullName.
    EXPECT_EQ(ok(name_string("\\")), (B{0x5c, 0x00}));
}

TEST(AmlNames, NameStringRejectsBadPaths) {
    for (const char* bad : {"", "\\_SB.", "\\.X", "_SB..X", "\\^X", "\\_SB.toolong", "_SB/X"}) {
        EXPECT_FALSE(name_string(bad).has_value()) << bad;
    }
}

// ---- Data objects (§20.2.3) ----

TEST(AmlIntegers, ConstantsAndSmallestPrefix) {
    EXPECT_EQ(enc(integer(0)), (B{0x00}));  // ZeroOp
    EXPECT_EQ(enc(integer(1)), (B{0x01}));  // OneOp
    EXPECT_EQ(enc(integer(std::numeric_limits<uint64_t>::max())), (B{0xff}));  // OnesOp
    EXPECT_EQ(enc(integer(2)), (B{0x0a, 0x02}));
    EXPECT_EQ(enc(integer(0xff)), (B{0x0a, 0xff}));
    EXPECT_EQ(enc(integer(0x100)), (B{0x0b, 0x00, 0x01}));
    EXPECT_EQ(enc(integer(0xffff)), (B{0x0b, 0xff, 0xff}));
    EXPECT_EQ(enc(integer(0x10000)), (B{0x0c, 0x00, 0x00, 0x01, 0x00}));
    EXPECT_EQ(enc(integer(0xffffffff)), (B{0x0c, 0xff, 0xff, 0xff, 0xff}));
    EXPECT_EQ(enc(integer(0x100000000)), (B{0x0e, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00}));
    EXPECT_EQ(enc(integer(0xfffffffffffffffe)), (B{0x0e, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}));
}

TEST(AmlStrings, NulTerminatedAscii) {
    EXPECT_EQ(enc(string("VMBUS")), (B{0x0d, 'V', 'M', 'B', 'U', 'S', 0x00}));
    EXPECT_EQ(enc(string("")), (B{0x0d, 0x00}));
    EXPECT_FALSE(encode(string("caf\xc3\xa9")).has_value());
    EXPECT_FALSE(encode(string(std::string_view("a\0b", 3))).has_value());
}

TEST(AmlEisaId, CompressesToTheSpecValue) {
    ASSERT_TRUE(eisa_id_value("PNP0501").has_value());
    EXPECT_EQ(*eisa_id_value("PNP0501"), 0x0105D041U);
    EXPECT_EQ(*eisa_id_value("PNP0A03"), 0x030AD041U);
    EXPECT_EQ(*eisa_id_value("PNP0C0F"), 0x0F0CD041U);
    EXPECT_EQ(enc(eisa_id("PNP0501")), (B{0x0c, 0x41, 0xd0, 0x05, 0x01}));
    // Always a DWordConst, even when the value would fit a smaller prefix.
    EXPECT_EQ(enc(eisa_id("PNP0000")), (B{0x0c, 0x41, 0xd0, 0x00, 0x00}));
}

TEST(AmlEisaId, RejectsMalformedIds) {
    for (const char* bad : {"pnp0501", "PNP050", "PNP05011", "PNP05G1", "PNP0a03", "P1P0501", ""}) {
        EXPECT_FALSE(eisa_id_value(bad).has_value()) << bad;
        EXPECT_FALSE(encode(eisa_id(bad)).has_value()) << bad;
    }
}

TEST(AmlPackage, S5Package) {
    // Name(\_S5, Package(){5, 5, 0, 0})
    const B expected{0x08, 0x5c, '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00};
    EXPECT_EQ(enc(name("\\_S5", package({integer(5), integer(5), integer(0), integer(0)}))), expected);
}

TEST(AmlPackage, EmptyAndNested) {
    EXPECT_EQ(enc(package({})), (B{0x12, 0x02, 0x00}));
    EXPECT_EQ(enc(package({package({integer(1)}), string("A")})),
              (B{0x12, 0x09, 0x02, 0x12, 0x03, 0x01, 0x01, 0x0d, 'A', 0x00}));
}

TEST(AmlPackage, RejectsTooManyOrNonDataElements) {
    EXPECT_FALSE(encode(package(std::vector<Node>(256, integer(0)))).has_value());
    EXPECT_TRUE(encode(package(std::vector<Node>(255, integer(0)))).has_value());
    EXPECT_FALSE(encode(package({device("DEV0", {})})).has_value());
}

TEST(AmlBuffer, ByteList) {
    EXPECT_EQ(enc(buffer({0xde, 0xad})), (B{0x11, 0x05, 0x0a, 0x02, 0xde, 0xad}));
    EXPECT_EQ(enc(buffer({0x7f})), (B{0x11, 0x03, 0x01, 0x7f}));  // BufferSize One
}

// ---- Resource templates (§6.4) ----

TEST(AmlResources, IoAndIrqNoFlags) {
    // ResourceTemplate(){ IO(Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags(){4} }
    const B expected{0x11, 0x10, 0x0a, 0x0d,                                // Buffer(13)
                     0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08,        // IO
                     0x22, 0x10, 0x00,                                      // IRQNoFlags
                     0x79, 0x00};                                           // EndTag
    EXPECT_EQ(enc(resource_template({Io{.min = 0x3f8, .max = 0x3f8, .alignment = 1, .length = 8},
                                     IrqNoFlags{{4}}})),
              expected);
}

TEST(AmlResources, EmptyTemplateIsJustTheEndTag) {
    EXPECT_EQ(enc(resource_template({})), (B{0x11, 0x05, 0x0a, 0x02, 0x79, 0x00}));
}

TEST(AmlResources, Decode10AndSeveralIrqs) {
    EXPECT_EQ(ok(resource_descriptor(Io{.min = 0x60, .max = 0x60, .alignment = 0, .length = 1, .decode16 = false})),
              (B{0x47, 0x00, 0x60, 0x00, 0x60, 0x00, 0x00, 0x01}));
    EXPECT_EQ(ok(resource_descriptor(IrqNoFlags{{1, 12}})), (B{0x22, 0x02, 0x10}));
}

TEST(AmlResources, DWordMemory) {
    // DWordMemory(ResourceConsumer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
    //             0, 0xFED00000, 0xFED003FF, 0, 0x400)
    const B expected{0x87, 0x17, 0x00, 0x00, 0x0d, 0x01,  //
                     0x00, 0x00, 0x00, 0x00,              // _GRA
                     0x00, 0x00, 0xd0, 0xfe,              // _MIN
                     0xff, 0x03, 0xd0, 0xfe,              // _MAX
                     0x00, 0x00, 0x00, 0x00,              // _TRA
                     0x00, 0x04, 0x00, 0x00};             // _LEN
    EXPECT_EQ(ok(resource_descriptor(DWordMemory{.min = 0xfed00000, .max = 0xfed003ff, .length = 0x400})), expected);
}

TEST(AmlResources, DWordMemoryFlags) {
    // DWordMemory(ResourceConsumer, SubDecode, MinNotFixed, MaxNotFixed, Prefetchable, ReadWrite,
    //             0xFFF, 0xC0000000, 0xFEBFFFFF, 0, 0x1000)
    const B out = ok(resource_descriptor(DWordMemory{.subtractive_decode = true,
                                                     .min_fixed = false,
                                                     .max_fixed = false,
                                                     .caching = MemoryCaching::Prefetchable,
                                                     .granularity = 0xfff,
                                                     .min = 0xc0000000,
                                                     .max = 0xfebfffff,
                                                     .length = 0x1000}));
    ASSERT_EQ(out.size(), 26U);
    EXPECT_EQ(out[4], 0x03);  // consumer | _DEC
    EXPECT_EQ(out[5], 0x07);  // prefetchable | read-write
}

TEST(AmlResources, QWordMemory) {
    // QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadOnly,
    //             0, 0x10_0000_0000, 0x17_FFFF_FFFF, 0, 0x8_0000_0000)
    const B expected{0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x02,                      //
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,          // _GRA
                     0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,          // _MIN
                     0xff, 0xff, 0xff, 0xff, 0x17, 0x00, 0x00, 0x00,          // _MAX
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,          // _TRA
                     0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00};         // _LEN
    EXPECT_EQ(ok(resource_descriptor(QWordMemory{.consumer = false,
                                                 .caching = MemoryCaching::Cacheable,
                                                 .read_write = false,
                                                 .min = 0x1000000000,
                                                 .max = 0x17ffffffff,
                                                 .length = 0x800000000})),
              expected);
}

TEST(AmlResources, WordBusNumber) {
    // WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100), as iasl
    // encodes it.
    const B expected{0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00,  // Word, bus numbers, producer, _MIF|_MAF
                     0x00, 0x00, 0x00, 0x00, 0xff, 0x00,  // _GRA, _MIN, _MAX
                     0x00, 0x00, 0x00, 0x01};             // _TRA, _LEN
    EXPECT_EQ(ok(resource_descriptor(WordBusNumber{.min = 0, .max = 0xff, .length = 0x100})), expected);
    EXPECT_FALSE(resource_descriptor(WordBusNumber{.min = 2, .max = 1}));
    EXPECT_FALSE(resource_descriptor(WordBusNumber{.min = 0, .max = 0xff, .length = 0x80}));  // fixed, wrong length
    EXPECT_FALSE(resource_descriptor(WordBusNumber{.min = 0, .max = 0xff, .length = 0x101}));
}

TEST(AmlResources, VmbusMmioWindowsTemplate) {
    // ResourceTemplate(){
    //   DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
    //               0, 0xF0000000, 0xF7FFFFFF, 0, 0x08000000)
    //   QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
    //               0, 0x140000000, 0x17FFFFFFF, 0, 0x40000000) }
    // 26 + 46 + 2 (EndTag) = 74 bytes of descriptors: the Buffer's PkgLength needs two bytes
    // (ACPI 6.4 §20.2.4: 0x40 | low nibble, then the rest; 78 = 0x4E -> 0x4E 0x04).
    const B expected{0x11, 0x4e, 0x04, 0x0a, 0x4a,                              // Buffer(74)
                     0x87, 0x17, 0x00, 0x00, 0x0c, 0x01,                        // DWord, producer
                     0x00, 0x00, 0x00, 0x00,                                    // _GRA
                     0x00, 0x00, 0x00, 0xf0,                                    // _MIN
                     0xff, 0xff, 0xff, 0xf7,                                    // _MAX
                     0x00, 0x00, 0x00, 0x00,                                    // _TRA
                     0x00, 0x00, 0x00, 0x08,                                    // _LEN
                     0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x01,                        // QWord, producer
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,            // _GRA
                     0x00, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x00,            // _MIN
                     0xff, 0xff, 0xff, 0x7f, 0x01, 0x00, 0x00, 0x00,            // _MAX
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,            // _TRA
                     0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,            // _LEN
                     0x79, 0x00};                                               // EndTag
    EXPECT_EQ(enc(resource_template({
                  DWordMemory{.consumer = false, .min = 0xf0000000, .max = 0xf7ffffff, .length = 0x08000000},
                  QWordMemory{.consumer = false, .min = 0x140000000, .max = 0x17fffffff, .length = 0x40000000},
              })),
              expected);
}

TEST(AmlResources, RejectsInvalidDescriptors) {
    EXPECT_FALSE(resource_descriptor(IrqNoFlags{{16}}).has_value());
    EXPECT_FALSE(resource_descriptor(Io{.min = 0x3f8, .max = 0x2f8, .alignment = 1, .length = 8}).has_value());
    // Fixed window of 0x400 bytes with a different length.
    EXPECT_FALSE(resource_descriptor(DWordMemory{.min = 0xfed00000, .max = 0xfed003ff, .length = 0x800}).has_value());
    EXPECT_FALSE(resource_descriptor(QWordMemory{.min = 2, .max = 1}).has_value());
    // A whole-address-space window accepts any length.
    EXPECT_TRUE(resource_descriptor(QWordMemory{.min = 0, .max = ~uint64_t{0}, .length = 0x1000}).has_value());
    EXPECT_FALSE(encode(resource_template({IrqNoFlags{{4}}, IrqNoFlags{{99}}})).has_value());
}

// ---- Named objects (§20.2.5) ----

TEST(AmlObjects, NameWithEisaIdHid) {
    EXPECT_EQ(enc(name("_HID", eisa_id("PNP0501"))), (B{0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01}));
}

TEST(AmlObjects, DeviceWithHid) {
    // Device(COM1){ Name(_HID, EisaId("PNP0501")) }: ExtOpPrefix DeviceOp PkgLength(4 + 10 + 1).
    const B expected{0x5b, 0x82, 0x0f, 'C', 'O', 'M', '1', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01};
    EXPECT_EQ(enc(device("COM1", {name("_HID", eisa_id("PNP0501"))})), expected);
}

TEST(AmlObjects, DeviceWithFullPath) {
    const B expected{0x5b, 0x82, 0x0b, 0x5c, 0x2e, '_', 'S', 'B', '_', 'V', 'M', 'B', 'S'};
    EXPECT_EQ(enc(device("\\_SB.VMBS", {})), expected);
}

TEST(AmlObjects, Scope) { EXPECT_EQ(enc(scope("\\_SB", {})), (B{0x10, 0x06, 0x5c, '_', 'S', 'B', '_'})); }

TEST(AmlObjects, MethodReturningAnInteger) {
    // Method(_STA, 0, NotSerialized){ Return(0x0F) }
    EXPECT_EQ(enc(method("_STA", 0, false, {return_(integer(0x0f))})),
              (B{0x14, 0x09, '_', 'S', 'T', 'A', 0x00, 0xa4, 0x0a, 0x0f}));
    // Method(M2, 2, Serialized){}: flags = ArgCount 2 | SerializeFlag (bit 3).
    EXPECT_EQ(enc(method("M2", 2, true, {})), (B{0x14, 0x06, 'M', '2', '_', '_', 0x0a}));
}

TEST(AmlObjects, ComDeviceAsPublished) {
    // Device(COM1){ Name(_HID, EisaId("PNP0501")) Name(_UID, One)
    //               Name(_CRS, ResourceTemplate(){ IO(Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags(){4} }) }
    const B expected{0x5b, 0x82, 0x2b, 'C',  'O',  'M',  '1',  0x08, '_',  'H',  'I',  'D',  0x0c, 0x41, 0xd0,
                     0x05, 0x01, 0x08, '_',  'U',  'I',  'D',  0x01, 0x08, '_',  'C',  'R',  'S',  0x11, 0x10,
                     0x0a, 0x0d, 0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00};
    EXPECT_EQ(enc(device("COM1", {
                  name("_HID", eisa_id("PNP0501")),
                  name("_UID", integer(1)),
                  name("_CRS", resource_template({Io{.min = 0x3f8, .max = 0x3f8, .alignment = 1, .length = 8},
                                                  IrqNoFlags{{4}}})),
              })),
              expected);
}

TEST(AmlObjects, TermListConcatenates) {
    const Result<Bytes> out = encode(std::vector<Node>{name("A", integer(1)), name("B", integer(0))});
    EXPECT_EQ(ok(out), (B{0x08, 'A', '_', '_', '_', 0x01, 0x08, 'B', '_', '_', '_', 0x00}));
}

TEST(AmlObjects, RejectsInvalidTrees) {
    EXPECT_FALSE(encode(name("_HID", device("X", {}))).has_value());             // Name of a non-data object
    EXPECT_FALSE(encode(scope("\\_SB", {integer(1)})).has_value());              // bare data in a TermList
    EXPECT_FALSE(encode(device("DEV0", {return_(integer(1))})).has_value());     // Return outside a Method
    EXPECT_FALSE(encode(std::vector<Node>{return_(integer(1))}).has_value());
    EXPECT_FALSE(encode(method("M8", 8, false, {})).has_value());                // more than 7 arguments
    EXPECT_FALSE(encode(method("_STA", 0, false, {return_(scope("X", {}))})).has_value());
    EXPECT_FALSE(encode(scope("\\_SB", {device("bad", {})})).has_value());       // lowercase name, nested
    EXPECT_FALSE(encode(name("_HID", eisa_id("nope"))).has_value());
}

}  // namespace
}  // namespace enlighten::acpi::aml
