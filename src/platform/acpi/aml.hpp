// A small AML (ACPI Machine Language) byte-code builder, enough for the DSDT the VMM publishes.
// Encodings follow ACPI 6.4 chapter 20 ("ACPI Machine Language Specification"); resource
// descriptors follow §6.4 ("Resource Data Types for ACPI").
//
// Usage: describe the namespace as a tree of Nodes with the factory functions below, then
// encode() it. Validation (name characters, EISA ids, IRQ numbers, ...) happens in encode(), so
// building the tree never fails and mistakes come back as one Error:
//
//   auto aml = aml::encode({
//       aml::name("\\_S5", aml::package({aml::integer(5), aml::integer(5), aml::integer(0)})),
//       aml::scope("\\_SB", {
//           aml::device("COM1", {
//               aml::name("_HID", aml::eisa_id("PNP0501")),
//               aml::name("_CRS", aml::resource_template({aml::Io{.min = 0x3f8, .max = 0x3f8,
//                                                                 .alignment = 1, .length = 8},
//                                                         aml::IrqNoFlags{{4}}})),
//           }),
//       }),
//   });
//
// Threads: values and a pure encode(), any thread; no locks, nothing blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.hpp"

namespace enlighten::acpi::aml {

using Bytes = std::vector<uint8_t>;

// ---- Resource descriptors (ACPI 6.4 §6.4), the items of a ResourceTemplate() ----

// IO(Decode16|Decode10, min, max, alignment, length): small I/O port descriptor (§6.4.2.5).
struct Io {
    uint16_t min = 0;
    uint16_t max = 0;
    uint8_t alignment = 1;
    uint8_t length = 0;
    bool decode16 = true;  // false: the device decodes only 10 address bits
};

// IRQNoFlags(){...}: 2-byte IRQ descriptor, edge-triggered active-high (§6.4.2.1). IRQs 0-15.
struct IrqNoFlags {
    std::vector<uint8_t> irqs;
};

// _MEM field of a memory address space descriptor (§6.4.3.5.5, type specific flags bits 2:1).
enum class MemoryCaching : uint8_t { NonCacheable = 0, Cacheable = 1, WriteCombining = 2, Prefetchable = 3 };

// DWordMemory(...) (§6.4.3.5.2) and QWordMemory(...) (§6.4.3.5.1). Field names follow the ASL
// macros. If both min_fixed and max_fixed are set and length != 0, length must be max-min+1.
template <typename Word>
struct AddressMemory {
    bool consumer = true;             // ResourceConsumer (general flags bit 0)
    bool subtractive_decode = false;  // _DEC
    bool min_fixed = true;            // _MIF
    bool max_fixed = true;            // _MAF
    MemoryCaching caching = MemoryCaching::NonCacheable;
    bool read_write = true;           // _RW
    Word granularity = 0;
    Word min = 0;
    Word max = 0;
    Word translation = 0;
    Word length = 0;
};
using DWordMemory = AddressMemory<uint32_t>;
using QWordMemory = AddressMemory<uint64_t>;

// WordBusNumber(...) (§6.4.3.5.3 with resource type 2): the bus numbers a PCI root bridge
// decodes, e.g. WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100).
struct WordBusNumber {
    bool consumer = false;  // a root bridge produces its bus range
    bool min_fixed = true;
    bool max_fixed = true;
    uint16_t granularity = 0;
    uint16_t min = 0;
    uint16_t max = 0;
    uint16_t translation = 0;
    uint16_t length = 0;
};

using Resource = std::variant<Io, IrqNoFlags, DWordMemory, QWordMemory, WordBusNumber>;

// ---- The tree ----

class Node {
public:
    enum class Kind : uint8_t {
        // Data objects (§20.2.3, §20.2.5.4)
        Integer,
        EisaId,
        String,
        Buffer,
        ResourceTemplate,
        Package,
        // Named objects and namespace modifiers (§20.2.5.1, §20.2.5.2)
        Name,
        Scope,
        Device,
        Method,
        // Statements (§20.2.5.3)
        Return,
    };

    [[nodiscard]] Kind kind() const { return kind_; }

    // Appends this node's AML to `out`; fails on an invalid name, value or tree shape.
    [[nodiscard]] Result<void> encode_to(Bytes& out) const;

private:
    explicit Node(Kind kind) : kind_(kind) {}

    friend Node integer(uint64_t);
    friend Node eisa_id(std::string_view);
    friend Node string(std::string_view);
    friend Node buffer(Bytes);
    friend Node resource_template(std::vector<Resource>);
    friend Node package(std::vector<Node>);
    friend Node name(std::string_view, Node);
    friend Node scope(std::string_view, std::vector<Node>);
    friend Node device(std::string_view, std::vector<Node>);
    friend Node method(std::string_view, uint8_t, bool, std::vector<Node>);
    friend Node return_(Node);

    Kind kind_;
    uint64_t value_ = 0;               // Integer: the value; Method: the argument count
    bool serialized_ = false;          // Method: Serialized
    std::string text_;                 // String/EisaId: the text; named objects: the NameString
    Bytes bytes_;                      // Buffer: the byte list
    std::vector<Resource> resources_;  // ResourceTemplate: the descriptors (EndTag is implied)
    std::vector<Node> children_;       // Package elements, object bodies, Name/Return operand
};

// Data objects.
Node integer(uint64_t value);        // ZeroOp/OneOp/OnesOp or the smallest Byte/Word/DWord/QWord
Node eisa_id(std::string_view id);   // EISAID("PNP0501"): always a DWordConst, 0x0105D041
Node string(std::string_view text);  // StringPrefix, ASCII 0x01-0x7F, NUL-terminated
Node buffer(Bytes bytes);            // Buffer(){...}
Node resource_template(std::vector<Resource> resources);  // Buffer of descriptors + EndTag
Node package(std::vector<Node> elements);                 // Package(){...}, up to 255 elements

// Named objects and namespace modifiers. `path` is an ASL NameString: "_HID", "\\_SB.VMBS",
// "^PCI0.ISA"; each segment is 1-4 characters and is padded with '_'.
Node name(std::string_view path, Node value);
Node scope(std::string_view path, std::vector<Node> body);
Node device(std::string_view path, std::vector<Node> body);
// Method(path, arg_count, Serialized|NotSerialized){ body }; sync level 0.
Node method(std::string_view path, uint8_t arg_count, bool serialized, std::vector<Node> body);
// Return(value); allowed only in a Method body.
Node return_(Node value);

// Encodes one node, or a TermList (e.g. the whole body of a DSDT).
Result<Bytes> encode(const Node& node);
Result<Bytes> encode(const std::vector<Node>& term_list);

// ---- Low-level encodings, exposed for tests ----

// PkgLength (§20.2.4) holding exactly `value` (which must already count the PkgLength bytes
// themselves): 1 byte up to 63, then 2/3/4 bytes up to 2^12-1, 2^20-1, 2^28-1.
Result<Bytes> pkg_length(uint32_t value);
// The PkgLength in front of `body_size` bytes: the encoded value includes its own size.
Result<Bytes> pkg_length_for_body(size_t body_size);
// NameSeg (§20.2.2): 1-4 characters [A-Z_][A-Z0-9_]*, padded with '_' to 4.
Result<Bytes> name_seg(std::string_view segment);
// NameString (§20.2.2): optional '\' or '^'..., then NullName, NameSeg, DualNamePath or
// MultiNamePath.
Result<Bytes> name_string(std::string_view path);
// The 32-bit compressed EISA id ("UUUHHHH": 3 letters A-Z, 4 uppercase hex digits) as stored in
// AML, e.g. "PNP0501" -> 0x0105D041.
Result<uint32_t> eisa_id_value(std::string_view id);
// One resource descriptor (§6.4), without an EndTag.
Result<Bytes> resource_descriptor(const Resource& resource);

}  // namespace enlighten::acpi::aml
