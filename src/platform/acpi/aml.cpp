#include "platform/acpi/aml.hpp"

#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

namespace enlighten::acpi::aml {

namespace {

// Opcodes and prefixes, ACPI 6.4 §20.3 (AML Byte Stream Byte Values).
constexpr uint8_t kZeroOp = 0x00;
constexpr uint8_t kOneOp = 0x01;
constexpr uint8_t kNameOp = 0x08;
constexpr uint8_t kBytePrefix = 0x0a;
constexpr uint8_t kWordPrefix = 0x0b;
constexpr uint8_t kDWordPrefix = 0x0c;
constexpr uint8_t kStringPrefix = 0x0d;
constexpr uint8_t kQWordPrefix = 0x0e;
constexpr uint8_t kScopeOp = 0x10;
constexpr uint8_t kBufferOp = 0x11;
constexpr uint8_t kPackageOp = 0x12;
constexpr uint8_t kMethodOp = 0x14;
constexpr uint8_t kDualNamePrefix = 0x2e;
constexpr uint8_t kMultiNamePrefix = 0x2f;
constexpr uint8_t kExtOpPrefix = 0x5b;
constexpr uint8_t kDeviceOp = 0x82;  // after ExtOpPrefix
constexpr uint8_t kRootChar = 0x5c;  // '\'
constexpr uint8_t kParentPrefixChar = 0x5e;  // '^'
constexpr uint8_t kReturnOp = 0xa4;
constexpr uint8_t kOnesOp = 0xff;

// Resource descriptor tags, ACPI 6.4 §6.4.2 (small) and §6.4.3 (large).
constexpr uint8_t kIrqNoFlagsTag = 0x22;  // small item 0x04, length 2
constexpr uint8_t kIoTag = 0x47;          // small item 0x08, length 7
constexpr uint8_t kEndTag = 0x79;         // small item 0x0F, length 1
constexpr uint8_t kDWordAddressTag = 0x87;
constexpr uint8_t kQWordAddressTag = 0x8a;
constexpr uint8_t kWordAddressTag = 0x88;
constexpr uint8_t kMemoryRangeType = 0;  // address space descriptor resource types
constexpr uint8_t kBusNumberRangeType = 2;

constexpr uint32_t kMaxPkgLength = (1U << 28) - 1;

void put_le(Bytes& out, uint64_t value, size_t size) {
    for (size_t i = 0; i < size; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

void append(Bytes& out, const Bytes& more) { out.insert(out.end(), more.begin(), more.end()); }

bool is_lead_name_char(char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_lead_name_char(c) || (c >= '0' && c <= '9'); }

// `lead` followed by a PkgLength covering `body`, then `body` (ScopeOp, DeviceOp, ...).
Result<void> append_with_pkg_length(Bytes& out, std::initializer_list<uint8_t> lead, const Bytes& body) {
    ENL_TRY(Bytes length, pkg_length_for_body(body.size()));
    out.insert(out.end(), lead);
    append(out, length);
    append(out, body);
    return {};
}

bool is_data_object(Node::Kind kind) {
    switch (kind) {
    case Node::Kind::Integer:
    case Node::Kind::EisaId:
    case Node::Kind::String:
    case Node::Kind::Buffer:
    case Node::Kind::ResourceTemplate:
    case Node::Kind::Package:
        return true;
    case Node::Kind::Name:
    case Node::Kind::Scope:
    case Node::Kind::Device:
    case Node::Kind::Method:
    case Node::Kind::Return:
        return false;
    }
    return false;
}

std::string_view kind_name(Node::Kind kind) {
    switch (kind) {
    case Node::Kind::Integer: return "Integer";
    case Node::Kind::EisaId: return "EISAID";
    case Node::Kind::String: return "String";
    case Node::Kind::Buffer: return "Buffer";
    case Node::Kind::ResourceTemplate: return "ResourceTemplate";
    case Node::Kind::Package: return "Package";
    case Node::Kind::Name: return "Name";
    case Node::Kind::Scope: return "Scope";
    case Node::Kind::Device: return "Device";
    case Node::Kind::Method: return "Method";
    case Node::Kind::Return: return "Return";
    }
    return "?";
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// ---- Resource descriptors ----

Result<Bytes> encode_resource(const Io& io) {
    if (io.min > io.max) return fail("IO descriptor: minimum 0x{:x} above maximum 0x{:x}", io.min, io.max);
    Bytes out{kIoTag, static_cast<uint8_t>(io.decode16 ? 1 : 0)};  // byte 1: _DEC
    put_le(out, io.min, 2);  // bytes 2-3: _MIN
    put_le(out, io.max, 2);  // bytes 4-5: _MAX
    out.push_back(io.alignment);  // byte 6: _ALN
    out.push_back(io.length);     // byte 7: _LEN
    return out;
}

Result<Bytes> encode_resource(const IrqNoFlags& irq) {
    uint16_t mask = 0;
    for (const uint8_t n : irq.irqs) {
        if (n > 15) return fail("IRQNoFlags descriptor: IRQ {} is not in 0-15", n);
        mask = static_cast<uint16_t>(mask | (1U << n));
    }
    Bytes out{kIrqNoFlagsTag};
    put_le(out, mask, 2);  // bytes 1-2: _INT mask
    return out;
}

// DWord (§6.4.3.5.2) and QWord (§6.4.3.5.1) address space descriptors share one layout apart
// from the width of the five numeric fields.
template <typename Word>
Result<Bytes> encode_resource(const AddressMemory<Word>& mem) {
    constexpr bool kQWord = std::is_same_v<Word, uint64_t>;
    constexpr std::string_view kWhat = kQWord ? "QWordMemory" : "DWordMemory";
    if (mem.min > mem.max) return fail("{} descriptor: minimum 0x{:x} above maximum 0x{:x}", kWhat, mem.min, mem.max);
    // max - min + 1 wraps to 0 for a window covering the whole address space; then any
    // length fits.
    const Word window = static_cast<Word>(mem.max - mem.min + 1);
    if (mem.length != 0 && window != 0) {
        if (mem.length > window) {
            return fail("{} descriptor: length 0x{:x} exceeds the window 0x{:x}-0x{:x}", kWhat, mem.length, mem.min,
                        mem.max);
        }
        if (mem.min_fixed && mem.max_fixed && mem.length != window) {
            return fail("{} descriptor: fixed window 0x{:x}-0x{:x} needs length 0x{:x}, not 0x{:x}", kWhat, mem.min,
                        mem.max, window, mem.length);
        }
    }
    constexpr uint16_t kLength = kQWord ? 43 : 23;  // bytes following the 3-byte header
    Bytes out{kQWord ? kQWordAddressTag : kDWordAddressTag};
    put_le(out, kLength, 2);         // bytes 1-2: length
    out.push_back(kMemoryRangeType); // byte 3: resource type
    // Byte 4, general flags: bit 3 _MAF, bit 2 _MIF, bit 1 _DEC, bit 0 consumer.
    out.push_back(static_cast<uint8_t>((mem.max_fixed ? 1U << 3 : 0U) | (mem.min_fixed ? 1U << 2 : 0U) |
                                       (mem.subtractive_decode ? 1U << 1 : 0U) | (mem.consumer ? 1U : 0U)));
    // Byte 5, memory type specific flags: bits 2:1 _MEM, bit 0 _RW (_MTP, _TTP left 0).
    out.push_back(static_cast<uint8_t>((static_cast<unsigned>(mem.caching) << 1) | (mem.read_write ? 1U : 0U)));
    for (const Word field : {mem.granularity, mem.min, mem.max, mem.translation, mem.length}) {
        put_le(out, field, sizeof(Word));
    }
    return out;
}

// Word address space descriptor (§6.4.3.5.3) for a bus number range (resource type 2).
Result<Bytes> encode_resource(const WordBusNumber& bus) {
    if (bus.min > bus.max) return fail("WordBusNumber descriptor: minimum {} above maximum {}", bus.min, bus.max);
    const uint32_t window = uint32_t{bus.max} - bus.min + 1;
    if (bus.length > window || (bus.min_fixed && bus.max_fixed && bus.length != 0 && bus.length != window))
        return fail("WordBusNumber descriptor: length {} does not fit the range {}-{}", bus.length, bus.min, bus.max);
    Bytes out{kWordAddressTag};
    put_le(out, 13, 2);  // bytes 1-2: length
    out.push_back(kBusNumberRangeType);
    // Byte 4, general flags as for memory; byte 5, type specific flags: none for bus numbers.
    out.push_back(static_cast<uint8_t>((bus.max_fixed ? 1U << 3 : 0U) | (bus.min_fixed ? 1U << 2 : 0U) |
                                       (bus.consumer ? 1U : 0U)));
    out.push_back(0);
    for (const uint16_t field : {bus.granularity, bus.min, bus.max, bus.translation, bus.length}) put_le(out, field, 2);
    return out;
}

// A TermList (§20.2.5): the body of a table, Scope, Device or Method. We put named objects in
// it, and Return statements directly inside a Method.
Result<void> encode_term_list(Bytes& out, const std::vector<Node>& terms, Node::Kind parent, std::string_view where) {
    for (const Node& term : terms) {
        const Node::Kind kind = term.kind();
        const bool allowed = kind == Node::Kind::Name || kind == Node::Kind::Scope || kind == Node::Kind::Device ||
                             kind == Node::Kind::Method ||
                             (kind == Node::Kind::Return && parent == Node::Kind::Method);
        if (!allowed) return fail("AML {}: a {} cannot appear here", where, kind_name(kind));
        ENL_TRY_VOID(term.encode_to(out));
    }
    return {};
}

}  // namespace

// ---- Low-level encodings ----

Result<Bytes> pkg_length(uint32_t value) {
    if (value > kMaxPkgLength) return fail("AML PkgLength {} exceeds the maximum {}", value, kMaxPkgLength);
    if (value <= 0x3f) return Bytes{static_cast<uint8_t>(value)};
    // Lead byte: bits 7:6 = number of following bytes, bits 3:0 = least significant nibble;
    // the following bytes hold the rest, least significant first.
    const size_t follow = value < (1U << 12) ? 1 : value < (1U << 20) ? 2 : 3;
    Bytes out{static_cast<uint8_t>((follow << 6) | (value & 0xf))};
    put_le(out, value >> 4, follow);
    return out;
}

Result<Bytes> pkg_length_for_body(size_t body_size) {
    for (size_t size = 1; size <= 4; ++size) {
        const size_t total = body_size + size;
        const size_t limit = size == 1 ? 0x3f : (size_t{1} << (4 + 8 * (size - 1))) - 1;
        if (total <= limit) return pkg_length(static_cast<uint32_t>(total));
    }
    return fail("AML package of {} bytes is too large for a PkgLength", body_size);
}

Result<Bytes> name_seg(std::string_view segment) {
    if (segment.empty() || segment.size() > 4) {
        return fail("AML name segment \"{}\" must have 1 to 4 characters", segment);
    }
    if (!is_lead_name_char(segment[0])) {
        return fail("AML name segment \"{}\" must start with A-Z or '_'", segment);
    }
    Bytes out;
    for (const char c : segment) {
        if (!is_name_char(c)) return fail("AML name segment \"{}\" may only contain A-Z, 0-9 and '_'", segment);
        out.push_back(static_cast<uint8_t>(c));
    }
    out.resize(4, static_cast<uint8_t>('_'));
    return out;
}

Result<Bytes> name_string(std::string_view path) {
    Bytes out;
    std::string_view rest = path;
    if (!rest.empty() && rest.front() == '\\') {
        out.push_back(kRootChar);
        rest.remove_prefix(1);
    } else {
        while (!rest.empty() && rest.front() == '^') {
            out.push_back(kParentPrefixChar);
            rest.remove_prefix(1);
        }
    }
    if (rest.empty()) {
        if (out.empty()) return fail("AML name string is empty");
        out.push_back(kZeroOp);  // NullName: "\" or "^"
        return out;
    }
    std::vector<Bytes> segments;
    while (true) {
        const size_t dot = rest.find('.');
        auto seg = name_seg(rest.substr(0, dot));
        if (!seg) return std::unexpected(seg.error().context(fmt::format("AML name \"{}\"", path)));
        segments.push_back(std::move(*seg));
        if (dot == std::string_view::npos) break;
        rest.remove_prefix(dot + 1);
    }
    if (segments.size() > 255) return fail("AML name \"{}\" has more than 255 segments", path);
    if (segments.size() == 2) {
        out.push_back(kDualNamePrefix);
    } else if (segments.size() > 2) {
        out.push_back(kMultiNamePrefix);
        out.push_back(static_cast<uint8_t>(segments.size()));
    }
    for (const Bytes& seg : segments) append(out, seg);
    return out;
}

Result<uint32_t> eisa_id_value(std::string_view id) {
    // ACPI 6.4 §19.6.35 (EISAID): "UUUNNNN", U an uppercase letter, N a hexadecimal digit.
    bool valid = id.size() == 7;
    for (size_t i = 0; valid && i < 3; ++i) valid = id[i] >= 'A' && id[i] <= 'Z';
    for (size_t i = 3; valid && i < 7; ++i) valid = hex_digit(id[i]) >= 0;
    if (!valid) return fail("EISAID \"{}\" is not 3 uppercase letters and 4 uppercase hex digits", id);

    // Letters are compressed to 5 bits each ('A' = 1) into a big-endian 16-bit vendor code,
    // followed by the big-endian 16-bit product number. Stored as a little-endian DWord.
    auto letter = [&](size_t i) { return static_cast<uint32_t>(id[i] - '@'); };
    auto digit = [&](size_t i) { return static_cast<uint32_t>(hex_digit(id[i])); };
    const uint32_t vendor = (letter(0) << 10) | (letter(1) << 5) | letter(2);
    const uint32_t product = (digit(3) << 12) | (digit(4) << 8) | (digit(5) << 4) | digit(6);
    const uint32_t byte0 = vendor >> 8;
    const uint32_t byte1 = vendor & 0xff;
    const uint32_t byte2 = product >> 8;
    const uint32_t byte3 = product & 0xff;
    return byte0 | (byte1 << 8) | (byte2 << 16) | (byte3 << 24);
}

Result<Bytes> resource_descriptor(const Resource& resource) {
    return std::visit([](const auto& r) { return encode_resource(r); }, resource);
}

// ---- The tree ----

Node integer(uint64_t value) {
    Node node(Node::Kind::Integer);
    node.value_ = value;
    return node;
}

Node eisa_id(std::string_view id) {
    Node node(Node::Kind::EisaId);
    node.text_ = id;
    return node;
}

Node string(std::string_view text) {
    Node node(Node::Kind::String);
    node.text_ = text;
    return node;
}

Node buffer(Bytes bytes) {
    Node node(Node::Kind::Buffer);
    node.bytes_ = std::move(bytes);
    return node;
}

Node resource_template(std::vector<Resource> resources) {
    Node node(Node::Kind::ResourceTemplate);
    node.resources_ = std::move(resources);
    return node;
}

Node package(std::vector<Node> elements) {
    Node node(Node::Kind::Package);
    node.children_ = std::move(elements);
    return node;
}

Node name(std::string_view path, Node value) {
    Node node(Node::Kind::Name);
    node.text_ = path;
    node.children_.push_back(std::move(value));
    return node;
}

Node scope(std::string_view path, std::vector<Node> body) {
    Node node(Node::Kind::Scope);
    node.text_ = path;
    node.children_ = std::move(body);
    return node;
}

Node device(std::string_view path, std::vector<Node> body) {
    Node node(Node::Kind::Device);
    node.text_ = path;
    node.children_ = std::move(body);
    return node;
}

Node method(std::string_view path, uint8_t arg_count, bool serialized, std::vector<Node> body) {
    Node node(Node::Kind::Method);
    node.text_ = path;
    node.value_ = arg_count;
    node.serialized_ = serialized;
    node.children_ = std::move(body);
    return node;
}

Node return_(Node value) {
    Node node(Node::Kind::Return);
    node.children_.push_back(std::move(value));
    return node;
}

Result<void> Node::encode_to(Bytes& out) const {
    switch (kind_) {
    case Kind::Integer:
        // §20.2.3: ConstObj for 0, 1 and Ones (all bits set: DSDT revision >= 2 has 64-bit
        // integers), else the smallest ComputationalData prefix that holds the value.
        if (value_ == 0) {
            out.push_back(kZeroOp);
        } else if (value_ == 1) {
            out.push_back(kOneOp);
        } else if (value_ == std::numeric_limits<uint64_t>::max()) {
            out.push_back(kOnesOp);
        } else if (value_ <= 0xff) {
            out.push_back(kBytePrefix);
            put_le(out, value_, 1);
        } else if (value_ <= 0xffff) {
            out.push_back(kWordPrefix);
            put_le(out, value_, 2);
        } else if (value_ <= 0xffff'ffff) {
            out.push_back(kDWordPrefix);
            put_le(out, value_, 4);
        } else {
            out.push_back(kQWordPrefix);
            put_le(out, value_, 8);
        }
        return {};

    case Kind::EisaId: {
        // Always a DWordConst, as iasl emits it, whatever the value.
        ENL_TRY(uint32_t id, eisa_id_value(text_));
        out.push_back(kDWordPrefix);
        put_le(out, id, 4);
        return {};
    }

    case Kind::String:
        out.push_back(kStringPrefix);
        for (const char c : text_) {
            const auto byte = static_cast<uint8_t>(c);
            if (byte == 0 || byte > 0x7f) return fail("AML string \"{}\" must be ASCII 0x01-0x7F", text_);
            out.push_back(byte);
        }
        out.push_back(0);  // NullChar
        return {};

    case Kind::Buffer:
    case Kind::ResourceTemplate: {
        // DefBuffer := BufferOp PkgLength BufferSize ByteList (§20.2.5.4).
        Bytes bytes = bytes_;
        if (kind_ == Kind::ResourceTemplate) {
            for (const Resource& resource : resources_) {
                ENL_TRY(Bytes descriptor, resource_descriptor(resource));
                append(bytes, descriptor);
            }
            // End Tag (§6.4.2.9); checksum 0 means "treat as valid".
            bytes.push_back(kEndTag);
            bytes.push_back(0);
        }
        Bytes body;
        ENL_TRY_VOID(integer(bytes.size()).encode_to(body));
        append(body, bytes);
        return append_with_pkg_length(out, {kBufferOp}, body);
    }

    case Kind::Package: {
        // DefPackage := PackageOp PkgLength NumElements PackageElementList (§20.2.5.4).
        if (children_.size() > 255) return fail("AML Package has {} elements (maximum 255)", children_.size());
        Bytes body{static_cast<uint8_t>(children_.size())};
        for (const Node& element : children_) {
            if (!is_data_object(element.kind_)) {
                return fail("AML Package: a {} cannot be a package element", kind_name(element.kind_));
            }
            ENL_TRY_VOID(element.encode_to(body));
        }
        return append_with_pkg_length(out, {kPackageOp}, body);
    }

    case Kind::Name: {
        // DefName := NameOp NameString DataRefObject (§20.2.5.1).
        const Node& value = children_.at(0);
        if (!is_data_object(value.kind_)) {
            return fail("AML Name \"{}\": a {} is not a data object", text_, kind_name(value.kind_));
        }
        ENL_TRY(Bytes path, name_string(text_));
        out.push_back(kNameOp);
        append(out, path);
        return value.encode_to(out);
    }

    case Kind::Scope:
    case Kind::Device:
    case Kind::Method: {
        // DefScope  := ScopeOp PkgLength NameString TermList            (§20.2.5.1)
        // DefDevice := DeviceOp PkgLength NameString TermList           (§20.2.5.2)
        // DefMethod := MethodOp PkgLength NameString MethodFlags TermList (§20.2.5.2)
        ENL_TRY(Bytes body, name_string(text_));
        if (kind_ == Kind::Method) {
            // MethodFlags (§20.2.5.2): bits 2:0 ArgCount, bit 3 SerializeFlag, bits 7:4 SyncLevel.
            if (value_ > 7) return fail("AML Method \"{}\": {} arguments (maximum 7)", text_, value_);
            body.push_back(static_cast<uint8_t>(value_ | (serialized_ ? 0x8U : 0U)));
        }
        ENL_TRY_VOID(encode_term_list(body, children_, kind_, fmt::format("{} \"{}\"", kind_name(kind_), text_)));
        if (kind_ == Kind::Scope) return append_with_pkg_length(out, {kScopeOp}, body);
        if (kind_ == Kind::Device) return append_with_pkg_length(out, {kExtOpPrefix, kDeviceOp}, body);
        return append_with_pkg_length(out, {kMethodOp}, body);
    }

    case Kind::Return: {
        // DefReturn := ReturnOp ArgObject (§20.2.5.3); we return data objects only.
        const Node& value = children_.at(0);
        if (!is_data_object(value.kind_)) {
            return fail("AML Return: a {} is not a data object", kind_name(value.kind_));
        }
        out.push_back(kReturnOp);
        return value.encode_to(out);
    }
    }
    return fail("AML node of unknown kind {}", static_cast<int>(kind_));
}

Result<Bytes> encode(const Node& node) {
    Bytes out;
    ENL_TRY_VOID(node.encode_to(out));
    return out;
}

Result<Bytes> encode(const std::vector<Node>& term_list) {
    Bytes out;
    ENL_TRY_VOID(encode_term_list(out, term_list, Node::Kind::Scope, "table body"));
    return out;
}

}  // namespace enlighten::acpi::aml
