#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "hv/partition.hpp"
#include "hv/synic.hpp"

using namespace enlighten;
using namespace enlighten::hv;

namespace {

struct RecordingIrq final : InterruptSink {
    std::vector<std::pair<uint32_t, uint8_t>> raised;
    void raise(uint32_t vp, uint8_t vector) override { raised.emplace_back(vp, vector); }
};

// 4 MiB of guest RAM at GPA 0, with helpers to look at SynIC pages.
class HvTest : public ::testing::Test {
protected:
    static constexpr uint64_t kRam = 4 << 20;
    static constexpr uint64_t kSimp = 0x10000, kSiefp = 0x11000, kHypercallPage = 0x12000, kInput = 0x13000;
    std::vector<uint8_t> ram = std::vector<uint8_t>(kRam);
    GuestMemory mem = GuestMemory::borrow({{0, kRam, ram.data()}});
    RecordingIrq irq;

    HvMessage& slot(uint32_t sint, uint64_t simp = kSimp) {
        return *reinterpret_cast<HvMessage*>(ram.data() + simp + sint * sizeof(HvMessage));
    }
    // What Linux does when hv_vmbus loads (hv_synic_enable_regs), for VP `vp`.
    static void enable_synic(Synic& s, uint32_t vp, uint64_t simp = kSimp, uint64_t siefp = kSiefp) {
        ASSERT_TRUE(s.write_msr(vp, kMsrSimp, simp | 1));
        ASSERT_TRUE(s.write_msr(vp, kMsrSiefp, siefp | 1));
        ASSERT_TRUE(s.write_msr(vp, kMsrSint0 + 2, 0xf3));  // vector 0xf3, unmasked, no auto-EOI
        ASSERT_TRUE(s.write_msr(vp, kMsrScontrol, 1));
    }
    // What Linux does after handling a message (vmbus_signal_eom).
    void guest_consume(Synic& s, uint32_t vp, uint32_t sint, uint64_t simp = kSimp) {
        HvMessage& m = slot(sint, simp);
        const bool pending = m.header.message_flags & kMessageFlagPending;
        m.header.message_type = kMessageTypeNone;
        if (pending) {
            ASSERT_TRUE(s.write_msr(vp, kMsrEom, 0));
        }
    }
};

}  // namespace

TEST(HypercallControl, DecodesFields) {
    const HypercallControl c(0x0123'0001'0000'005dULL | (1ULL << 16) | (3ULL << 17));
    EXPECT_EQ(c.code(), 0x5d);
    EXPECT_TRUE(c.fast());
    EXPECT_EQ(c.var_header_size(), 3u);
    EXPECT_EQ(c.rep_count(), 1u);
    EXPECT_EQ(c.rep_start(), 0x123u);
    EXPECT_FALSE(c.reserved_bits_set());
    EXPECT_TRUE(HypercallControl(1ULL << 27).reserved_bits_set());
    EXPECT_TRUE(HypercallControl(1ULL << 44).reserved_bits_set());
    EXPECT_TRUE(HypercallControl(1ULL << 63).reserved_bits_set());
}

TEST_F(HvTest, CpuidAdvertisesExactlyWhatIsEmulated) {
    Partition p(mem, irq, PartitionConfig{.num_vps = 2, .tsc_hz = 2'000'000'000, .apic_hz = 1'000'000'000, .hypercall_port = 0x5c});
    const auto leaves = p.cpuid_leaves();
    // Returns the leaf, or a static all-ones entry that fails the checks below.
    auto find = [&](uint32_t fn) -> const kvm_cpuid_entry2* {
        for (const auto& e : leaves)
            if (e.function == fn) return &e;
        static const kvm_cpuid_entry2 missing = {0xdead, 0, 0, ~0U, ~0U, ~0U, ~0U, {}};
        ADD_FAILURE() << "leaf " << std::hex << fn << " missing";
        return &missing;
    };
    const auto* vendor = find(0x40000000);
    char sig[13] = {};
    std::memcpy(sig, &vendor->ebx, 4);
    std::memcpy(sig + 4, &vendor->ecx, 4);
    std::memcpy(sig + 8, &vendor->edx, 4);
    EXPECT_STREQ(sig, "Microsoft Hv");
    EXPECT_GE(vendor->eax, 0x40000005u);
    EXPECT_EQ(find(0x40000001)->eax, 0x31237648u);  // "Hv#1"
    const auto* feat = find(0x40000003);
    // Required by ms_hyperv_platform(): hypercall and VP index MSRs.
    EXPECT_TRUE(feat->eax & kFeatHypercall);
    EXPECT_TRUE(feat->eax & kFeatVpIndex);
    EXPECT_TRUE(feat->eax & kFeatSynic);
    // Not emulated, so not advertised.
    EXPECT_FALSE(feat->eax & kFeatSyntimer);
    EXPECT_FALSE(feat->eax & kFeatReferenceTsc);
    EXPECT_FALSE(feat->eax & kFeatTimeRefCount);  // would make the guest's clock an MSR exit
    EXPECT_TRUE(feat->eax & kFeatAccessFrequency);
    EXPECT_TRUE(feat->edx & kMiscFrequencyMsrs);
    EXPECT_EQ(feat->ebx & (1U << 12), 0u);  // not a root partition
    EXPECT_EQ(feat->ebx & (1U << 1), 0u);   // no partition id hypercall
    EXPECT_EQ(feat->ebx & (1U << 20), 0u);  // no extended hypercalls
    EXPECT_TRUE(find(0x40000004)->eax & kHintDeprecatingAeoi);
    EXPECT_EQ(find(0x40000004)->eax & 0x0c0cU, 0u);  // no TLB flush, APIC access, cluster IPI, ex masks
    EXPECT_EQ(find(0x40000005)->eax, 2u);
    EXPECT_EQ(find(0x40000081)->eax, 0u);
    for (const auto& e : leaves) {
        EXPECT_GE(e.function, 0x40000000u);
        EXPECT_LE(e.function, 0x4000ffffu);
        EXPECT_NE(e.ebx, 0x4b4d564bu);  // no "KVMK" anywhere in the range
    }
    // Without a TSC frequency the frequency MSRs are not offered.
    Partition p2(mem, irq, PartitionConfig{.num_vps = 1, .tsc_hz = 0});
    for (const auto& e : p2.cpuid_leaves())
        if (e.function == 0x40000003) {
            EXPECT_FALSE(e.eax & kFeatAccessFrequency);
        }
}

TEST_F(HvTest, GuestOsIdHypercallPageAndVpIndex) {
    Partition p(mem, irq, PartitionConfig{.num_vps = 2, .hypercall_port = 0x5c});
    // Enabling the hypercall page before the guest OS id is set does not stick.
    ASSERT_TRUE(p.write_msr(0, kMsrHypercall, kHypercallPage | 1));
    EXPECT_EQ(p.read_msr(0, kMsrHypercall).value() & 1, 0u);
    ASSERT_TRUE(p.write_msr(0, kMsrGuestOsId, 0x8100000601C00000ULL));
    EXPECT_EQ(p.read_msr(1, kMsrGuestOsId).value(), 0x8100000601C00000ULL);
    ASSERT_TRUE(p.write_msr(0, kMsrHypercall, kHypercallPage | 1));
    EXPECT_EQ(p.read_msr(0, kMsrHypercall).value(), kHypercallPage | 1);
    // The page: in eax, 0x5c; ret.
    EXPECT_EQ(ram[kHypercallPage + 0], 0xe5);
    EXPECT_EQ(ram[kHypercallPage + 1], 0x5c);
    EXPECT_EQ(ram[kHypercallPage + 2], 0xc3);
    // With a doorbell port, the fast HvSignalEvent path comes first and the slow path is
    // the same `in` at the end (bytes checked against the assembler's encoding).
    Partition fast(mem, irq, PartitionConfig{.num_vps = 1, .hypercall_port = 0x5c, .doorbell_port = 0x5d});
    const auto stub = Partition::hypercall_stub(0x5c, 0x5d);
    const std::vector<uint8_t> expect = {0x48, 0x81, 0xf9, 0x5d, 0x00, 0x01, 0x00, 0x75, 0x14, 0x48, 0x89,
                                         0xd0, 0x48, 0xc1, 0xe8, 0x18, 0x75, 0x0b, 0x89, 0xd0, 0xba, 0x5d,
                                         0x00, 0x00, 0x00, 0xef, 0x31, 0xc0, 0xc3, 0xe5, 0x5c, 0xc3};
    EXPECT_EQ(stub, expect);
    ASSERT_TRUE(fast.write_msr(0, kMsrGuestOsId, 1));
    ASSERT_TRUE(fast.write_msr(0, kMsrHypercall, kHypercallPage | 1));
    EXPECT_TRUE(std::equal(expect.begin(), expect.end(), ram.begin() + kHypercallPage));
    EXPECT_EQ(ram[kHypercallPage + expect.size()], 0xcc);  // int3 after it
    // Clearing the guest OS id disables it.
    ASSERT_TRUE(p.write_msr(0, kMsrGuestOsId, 0));
    EXPECT_EQ(p.read_msr(0, kMsrHypercall).value() & 1, 0u);
    // A hypercall page outside RAM is refused (#GP).
    ASSERT_TRUE(p.write_msr(0, kMsrGuestOsId, 1));
    EXPECT_FALSE(p.write_msr(0, kMsrHypercall, (kRam + 0x1000) | 1));

    EXPECT_EQ(p.read_msr(0, kMsrVpIndex).value(), 0u);
    EXPECT_EQ(p.read_msr(1, kMsrVpIndex).value(), 1u);
    EXPECT_FALSE(p.write_msr(0, kMsrVpIndex, 5));  // read-only
    EXPECT_FALSE(p.read_msr(2, kMsrVpIndex));      // no such VP
}

TEST_F(HvTest, MsrSemantics) {
    Partition p(mem, irq, PartitionConfig{.num_vps = 1, .tsc_hz = 2'500'000'000});
    EXPECT_EQ(p.read_msr(0, kMsrTscFrequency).value(), 2'500'000'000u);
    EXPECT_EQ(p.read_msr(0, kMsrApicFrequency).value(), 1'000'000'000u);
    const uint64_t t1 = p.read_msr(0, kMsrTimeRefCount).value();
    const uint64_t t2 = p.read_msr(0, kMsrTimeRefCount).value();
    EXPECT_LE(t1, t2);  // monotonic
    ASSERT_TRUE(p.write_msr(0, kMsrVpAssistPage, 0x5000 | 1));
    EXPECT_EQ(p.read_msr(0, kMsrVpAssistPage).value(), 0x5001u);
    ASSERT_TRUE(p.write_msr(0, kMsrTscInvariantControl, 1));
    // Unknown synthetic MSRs raise #GP.
    EXPECT_FALSE(p.read_msr(0, 0x400000b0));  // STIMER0_CONFIG: not offered
    EXPECT_FALSE(p.write_msr(0, 0x400000b0, 0));
    EXPECT_FALSE(p.read_msr(0, 0x40000199));
    EXPECT_EQ(p.read_msr(0, kMsrSversion).value(), 1u);
    EXPECT_FALSE(p.write_msr(0, kMsrSversion, 2));
    // SINT reset value is masked; an unmasked SINT needs a vector >= 16.
    EXPECT_EQ(p.read_msr(0, kMsrSint0 + 2).value(), kSintMasked);
    EXPECT_FALSE(p.write_msr(0, kMsrSint0 + 2, 0x05));
    EXPECT_TRUE(p.write_msr(0, kMsrSint0 + 2, 0x05 | kSintMasked));
}

TEST_F(HvTest, CrashMsrsReportTheGuestPanic) {
    Partition p(mem, irq, PartitionConfig{.num_vps = 1});
    CrashReport got;
    int crashes = 0;
    p.on_crash = [&](const CrashReport& r) {
        got = r;
        ++crashes;
    };
    EXPECT_EQ(p.read_msr(0, kMsrCrashCtl).value(), kCrashCtlNotify | kCrashCtlNotifyMsg);
    const char text[] = "Kernel panic - not syncing: test\x01";
    std::memcpy(ram.data() + 0x20000, text, sizeof(text) - 1);
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP0, 0x11));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP0 + 1, 0x22));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP0 + 2, 0x33));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP0 + 3, 0x20000));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP4, sizeof(text) - 1));
    EXPECT_EQ(crashes, 0);
    ASSERT_TRUE(p.write_msr(0, kMsrCrashCtl, kCrashCtlNotify | kCrashCtlNotifyMsg));
    ASSERT_EQ(crashes, 1);
    EXPECT_EQ(got.params[0], 0x11u);
    EXPECT_EQ(got.params[2], 0x33u);
    EXPECT_EQ(got.message, "Kernel panic - not syncing: test.");  // control character sanitised
    // A hostile length is clamped; a GPA outside RAM gives no text but still a report.
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP0 + 3, kRam - 16));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashP4, ~0ULL));
    ASSERT_TRUE(p.write_msr(0, kMsrCrashCtl, kCrashCtlNotify | kCrashCtlNotifyMsg));
    EXPECT_EQ(crashes, 2);
    EXPECT_TRUE(got.message.empty());
}

TEST_F(HvTest, HypercallDispatchAndStatusCodes) {
    Partition p(mem, irq, PartitionConfig{.num_vps = 1});
    std::vector<std::tuple<uint32_t, uint32_t, std::vector<uint8_t>>> posted;
    std::vector<std::pair<uint32_t, uint16_t>> events;
    p.set_handlers(
        [&](uint32_t, uint32_t conn, uint32_t type, std::span<const uint8_t> payload) {
            if (conn != 1) return Status::InvalidConnectionId;
            posted.emplace_back(conn, type, std::vector<uint8_t>(payload.begin(), payload.end()));
            return Status::Success;
        },
        [&](uint32_t, uint32_t conn, uint16_t flag) {
            if (conn != 7) return Status::InvalidConnectionId;
            events.emplace_back(conn, flag);
            return Status::Success;
        });
    auto status = [](uint64_t r) { return static_cast<Status>(r & 0xffff); };

    HvInputPostMessage in{};
    in.connection_id = 1;
    in.message_type = 1;
    in.payload_size = 8;
    in.payload[0] = 0xab;
    std::memcpy(ram.data() + kInput, &in, sizeof(in));
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kInput, 0)), Status::Success);
    ASSERT_EQ(posted.size(), 1u);
    EXPECT_EQ(std::get<2>(posted[0]).size(), 8u);
    EXPECT_EQ(std::get<2>(posted[0])[0], 0xab);

    // Bad input: error statuses, nothing delivered.
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kInput + 4, 0)), Status::InvalidAlignment);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kRam, 0)), Status::InvalidHypercallInput);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kRam - 128, 0)), Status::InvalidHypercallInput);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, ~0ULL & ~7ULL, 0)), Status::InvalidHypercallInput);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage | (1ULL << 16), kInput, 0)), Status::InvalidHypercallInput);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage | (1ULL << 32), kInput, 0)), Status::InvalidHypercallInput);
    in.payload_size = 241;
    std::memcpy(ram.data() + kInput, &in, sizeof(in));
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kInput, 0)), Status::InvalidParameter);
    in.payload_size = 8;
    in.connection_id = 99;
    std::memcpy(ram.data() + kInput, &in, sizeof(in));
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kInput, 0)), Status::InvalidConnectionId);
    in.connection_id = 1;
    in.message_type = 0;
    std::memcpy(ram.data() + kInput, &in, sizeof(in));
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage, kInput, 0)), Status::InvalidParameter);
    EXPECT_EQ(posted.size(), 1u);

    // HvSignalEvent, fast: connection id in RDX bits 23:0, flag number in 47:32.
    EXPECT_EQ(status(p.hypercall(0, kHvcallSignalEvent | (1ULL << 16), 7, 0)), Status::Success);
    EXPECT_EQ(status(p.hypercall(0, kHvcallSignalEvent | (1ULL << 16), 7 | (3ULL << 32), 0)), Status::Success);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].second, 3);
    EXPECT_EQ(status(p.hypercall(0, kHvcallSignalEvent | (1ULL << 16), 8, 0)), Status::InvalidConnectionId);
    EXPECT_EQ(status(p.hypercall(0, kHvcallSignalEvent | (1ULL << 16), 7 | (1ULL << 24), 0)), Status::InvalidHypercallInput);
    // Slow form reads the parameter from memory.
    const uint64_t param = 7;
    std::memcpy(ram.data() + kInput, &param, 8);
    EXPECT_EQ(status(p.hypercall(0, kHvcallSignalEvent, kInput, 0)), Status::Success);
    EXPECT_EQ(events.size(), 3u);

    // Everything else.
    EXPECT_EQ(status(p.hypercall(0, 0x0002, 0, 0)), Status::InvalidHypercallCode);  // flush
    EXPECT_EQ(status(p.hypercall(0, 0x0046, 0, 0)), Status::InvalidHypercallCode);  // partition id
    EXPECT_EQ(status(p.hypercall(0, 0x8001, 0, 0)), Status::InvalidHypercallCode);
    EXPECT_EQ(status(p.hypercall(0, kHvcallPostMessage | (1ULL << 31), kInput, 0)), Status::InvalidHypercallInput);
}

TEST_F(HvTest, MessagesWaitUntilTheSynicIsEnabled) {
    Synic s(mem, irq, 1);
    const uint8_t payload[] = {1, 2, 3};
    ASSERT_TRUE(s.post_message(0, 2, kMessageTypeVmbus, payload));
    EXPECT_EQ(s.queued(0, 2), 1u);
    EXPECT_TRUE(irq.raised.empty());
    enable_synic(s, 0);
    EXPECT_EQ(s.queued(0, 2), 0u);
    ASSERT_EQ(irq.raised.size(), 1u);
    EXPECT_EQ(irq.raised[0], std::make_pair(0u, uint8_t{0xf3}));
    EXPECT_EQ(slot(2).header.message_type, kMessageTypeVmbus);
    EXPECT_EQ(slot(2).header.payload_size, 3);
    EXPECT_EQ(slot(2).header.message_flags, 0);
    EXPECT_EQ(slot(2).payload[2], 3);
}

TEST_F(HvTest, MsgPendingAndEomDeliverOneMessagePerSlot) {
    Synic s(mem, irq, 1);
    enable_synic(s, 0);
    for (uint8_t i = 0; i < 3; ++i) ASSERT_TRUE(s.post_message(0, 2, kMessageTypeVmbus, std::span(&i, 1)));
    // The first is delivered; the slot says more are waiting.
    EXPECT_EQ(slot(2).payload[0], 0);
    EXPECT_EQ(slot(2).header.message_flags & kMessageFlagPending, kMessageFlagPending);
    EXPECT_EQ(s.queued(0, 2), 2u);
    EXPECT_EQ(irq.raised.size(), 1u);
    guest_consume(s, 0, 2);  // frees the slot and writes EOM
    EXPECT_EQ(slot(2).payload[0], 1);
    EXPECT_EQ(irq.raised.size(), 2u);  // each message gets its own interrupt
    guest_consume(s, 0, 2);
    EXPECT_EQ(slot(2).payload[0], 2);
    EXPECT_EQ(slot(2).header.message_flags & kMessageFlagPending, 0);  // the last one
    guest_consume(s, 0, 2);
    EXPECT_EQ(slot(2).header.message_type, kMessageTypeNone);
    EXPECT_EQ(irq.raised.size(), 3u);
}

TEST_F(HvTest, BusySlotGetsMsgPendingSetAndRecoversIfTheGuestFreedItMeanwhile) {
    Synic s(mem, irq, 1);
    enable_synic(s, 0);
    uint8_t a = 0xa, b = 0xb;
    ASSERT_TRUE(s.post_message(0, 2, kMessageTypeVmbus, std::span(&a, 1)));
    EXPECT_EQ(slot(2).header.message_flags, 0);
    // A second message while the first is unread: msg_pending is set on the busy slot.
    ASSERT_TRUE(s.post_message(0, 2, kMessageTypeVmbus, std::span(&b, 1)));
    EXPECT_EQ(slot(2).header.message_flags & kMessageFlagPending, kMessageFlagPending);
    EXPECT_EQ(slot(2).payload[0], 0xa);
    // The guest frees it without EOM (it read the flags before we set them): the next post
    // or any SynIC MSR write must not lose the queued message.
    slot(2).header.message_type = kMessageTypeNone;
    slot(2).header.message_flags = 0;
    uint8_t c = 0xc;
    ASSERT_TRUE(s.post_message(0, 2, kMessageTypeVmbus, std::span(&c, 1)));
    EXPECT_EQ(slot(2).payload[0], 0xb);
    guest_consume(s, 0, 2);
    EXPECT_EQ(slot(2).payload[0], 0xc);
}

TEST_F(HvTest, QueueIsBoundedAndMaskedSintsHoldMessages) {
    Synic s(mem, irq, 1);
    uint8_t x = 0;
    for (size_t i = 0; i < Synic::kQueueLimit; ++i) ASSERT_TRUE(s.post_message(0, 2, 1, std::span(&x, 1)));
    EXPECT_FALSE(s.post_message(0, 2, 1, std::span(&x, 1)));
    EXPECT_EQ(s.stats().messages_dropped, 1u);
    EXPECT_FALSE(s.post_message(1, 2, 1, std::span(&x, 1)));   // no such VP
    EXPECT_FALSE(s.post_message(0, 16, 1, std::span(&x, 1)));  // no such SINT
    std::vector<uint8_t> big(241);
    EXPECT_FALSE(s.post_message(0, 2, 1, big));
    EXPECT_FALSE(s.post_message(0, 2, 0, std::span(&x, 1)));  // type 0 means "free"
}

// Reliability review B4: with 64 VPs whose SIMPs are off, 256 messages per VP and SINT were
// 64 x 16 x 256 queued messages (67 MB). All queues together now hold kTotalQueueLimit; a
// delivery makes room again.
TEST_F(HvTest, AllQueuesTogetherAreBounded) {
    Synic s(mem, irq, 64);
    uint8_t x = 0;
    size_t accepted = 0;
    for (uint32_t vp = 0; vp < 64; ++vp)
        for (uint32_t sint = 0; sint < 16; ++sint)
            for (size_t i = 0; i < Synic::kQueueLimit; ++i) accepted += s.post_message(vp, sint, 1, std::span(&x, 1));
    EXPECT_EQ(accepted, Synic::kTotalQueueLimit);
    EXPECT_EQ(s.queued_total(), Synic::kTotalQueueLimit);
    EXPECT_EQ(s.stats().messages_dropped, 64u * 16u * Synic::kQueueLimit - Synic::kTotalQueueLimit);
    // (VP 0's sixteen queues took them all.) VP 0 turns its SynIC on: one message of SINT 2
    // is delivered, and one more fits, anywhere.
    EXPECT_EQ(s.queued(0, 2), Synic::kQueueLimit);
    enable_synic(s, 0, kSimp, kSiefp);
    EXPECT_EQ(s.queued_total(), Synic::kTotalQueueLimit - 1);
    EXPECT_TRUE(s.post_message(63, 15, 1, std::span(&x, 1)));
    EXPECT_FALSE(s.post_message(40, 3, 1, std::span(&x, 1)));
}

TEST_F(HvTest, SimpOutsideRamKeepsMessagesQueued) {
    Synic s(mem, irq, 1);
    enable_synic(s, 0, kRam + 0x1000, kSiefp);
    uint8_t x = 1;
    ASSERT_TRUE(s.post_message(0, 2, 1, std::span(&x, 1)));
    EXPECT_EQ(s.queued(0, 2), 1u);
    EXPECT_TRUE(irq.raised.empty());
    // Moving the SIMP into RAM delivers it.
    ASSERT_TRUE(s.write_msr(0, kMsrSimp, kSimp | 1));
    EXPECT_EQ(s.queued(0, 2), 0u);
    EXPECT_EQ(irq.raised.size(), 1u);
}

TEST_F(HvTest, EventFlagsInterruptOnlyOnTheRisingEdge) {
    Synic s(mem, irq, 2);
    EXPECT_FALSE(s.signal_event(1, 2, 5));  // not enabled yet
    enable_synic(s, 1, kSimp, kSiefp);
    EXPECT_TRUE(s.signal_event(1, 2, 5));
    EXPECT_EQ(ram[kSiefp + 2 * 256 + 0] & (1 << 5), 1 << 5);
    ASSERT_EQ(irq.raised.size(), 1u);
    EXPECT_EQ(irq.raised[0].first, 1u);
    EXPECT_TRUE(s.signal_event(1, 2, 5));  // still set: no second interrupt
    EXPECT_EQ(irq.raised.size(), 1u);
    ram[kSiefp + 2 * 256] = 0;  // guest consumed it
    EXPECT_TRUE(s.signal_event(1, 2, 5));
    EXPECT_EQ(irq.raised.size(), 2u);
    EXPECT_TRUE(s.signal_event(1, 2, 2047));
    EXPECT_EQ(ram[kSiefp + 2 * 256 + 255] & 0x80, 0x80);
    EXPECT_FALSE(s.signal_event(1, 2, 2048));
    // Masked SINT: nothing.
    ASSERT_TRUE(s.write_msr(1, kMsrSint0 + 2, 0xf3 | kSintMasked));
    EXPECT_FALSE(s.signal_event(1, 2, 9));
}

TEST_F(HvTest, DisabledSynicStopsDelivery) {
    Synic s(mem, irq, 1);
    enable_synic(s, 0);
    // hv_synic_disable_regs: SINT masked, SIMP off, SIEFP off, SCONTROL off.
    ASSERT_TRUE(s.write_msr(0, kMsrSint0 + 2, 0xf3 | kSintMasked));
    ASSERT_TRUE(s.write_msr(0, kMsrSimp, 0));
    ASSERT_TRUE(s.write_msr(0, kMsrSiefp, 0));
    ASSERT_TRUE(s.write_msr(0, kMsrScontrol, 0));
    std::fill(ram.begin() + kSimp, ram.begin() + kSimp + 4096, uint8_t{0x77});
    uint8_t x = 1;
    ASSERT_TRUE(s.post_message(0, 2, 1, std::span(&x, 1)));
    // The old page is the guest's again: not a byte written.
    for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(ram[kSimp + i], 0x77);
    EXPECT_TRUE(irq.raised.empty());
}
