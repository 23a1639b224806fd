#include "platform/devices/serial.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace enlighten;

namespace {

class SerialTest : public ::testing::Test {
protected:
    std::vector<bool> irq_edges;
    std::string out;
    Serial uart{[this](bool level) { irq_edges.push_back(level); }, [this](uint8_t b) { out.push_back(static_cast<char>(b)); }};

    uint8_t rd(uint64_t reg) {
        uint8_t v = 0;
        uart.io_read(reg, std::span(&v, 1));
        return v;
    }
    void wr(uint64_t reg, uint8_t v) { uart.io_write(reg, std::span(&v, 1)); }
    [[nodiscard]] bool irq() const { return !irq_edges.empty() && irq_edges.back(); }
};

}  // namespace

TEST_F(SerialTest, TransmitsBytes) {
    for (char c : std::string("hi\n")) wr(0, static_cast<uint8_t>(c));
    EXPECT_EQ(out, "hi\n");
    EXPECT_EQ(rd(5) & 0x60, 0x60);  // THRE and TEMT
}

TEST_F(SerialTest, Linux8250AutoconfigSequence) {
    // IER read-back (autoconfig checks 0 and 0x0f).
    wr(1, 0);
    EXPECT_EQ(rd(1), 0);
    wr(1, 0x0f);
    EXPECT_EQ(rd(1) & 0x0f, 0x0f);
    wr(1, 0);
    // Loopback test: MCR = LOOP | OUT2 | RTS must show DCD | CTS in MSR[7:4].
    wr(4, 0x10 | 0x0a);
    EXPECT_EQ(rd(6) & 0xf0, 0x90);
    wr(4, 0x08);
    // FIFO detection: IIR[7:6] = 11 after enabling the FIFO means 16550A.
    wr(2, 0x01);
    EXPECT_EQ(rd(2) >> 6, 3);
    // Scratch register.
    wr(7, 0xa5);
    EXPECT_EQ(rd(7), 0xa5);
    // Divisor latch.
    wr(3, 0x80);
    wr(0, 0x01);
    wr(1, 0x00);
    EXPECT_EQ(rd(0), 0x01);
    wr(3, 0x03);
}

TEST_F(SerialTest, ThreInterruptOnEnableAndClearedByIirRead) {
    // serial8250_do_startup: enable THRI, read IIR, disable, enable again, read IIR.
    wr(1, 0x02);
    EXPECT_TRUE(irq());
    EXPECT_EQ(rd(2) & 0x0f, 0x02);
    EXPECT_FALSE(irq());
    EXPECT_EQ(rd(2) & 0x0f, 0x01);  // cleared by the read
    wr(1, 0x00);
    wr(1, 0x02);
    EXPECT_EQ(rd(2) & 0x0f, 0x02);  // raised again: no UART_BUG_THRE
    // Writing THR re-arms it.
    wr(0, 'x');
    EXPECT_TRUE(irq());
    EXPECT_EQ(rd(2) & 0x0f, 0x02);
    wr(1, 0x00);
    EXPECT_FALSE(irq());
}

TEST_F(SerialTest, ReceiveRaisesDataInterrupt) {
    wr(1, 0x01);
    EXPECT_FALSE(irq());
    const uint8_t input[] = {'a', 'b'};
    EXPECT_EQ(uart.push_input(input), 2u);
    EXPECT_TRUE(irq());
    EXPECT_EQ(rd(2) & 0x0f, 0x04);
    EXPECT_EQ(rd(5) & 0x01, 0x01);
    EXPECT_EQ(rd(0), 'a');
    EXPECT_TRUE(irq());
    EXPECT_EQ(rd(0), 'b');
    EXPECT_FALSE(irq());
    EXPECT_EQ(rd(5) & 0x01, 0);
}

TEST_F(SerialTest, LoopbackModeEchoesIntoReceiver) {
    wr(4, 0x10);
    wr(0, 'z');
    EXPECT_EQ(out, "");
    EXPECT_EQ(rd(0), 'z');
}

TEST_F(SerialTest, OverrunIsReportedNotFatal) {
    std::vector<uint8_t> flood(Serial::kRxCapacity + 10, 'q');
    EXPECT_EQ(uart.push_input(flood), Serial::kRxCapacity);
    EXPECT_EQ(rd(5) & 0x02, 0x02);  // OE
    EXPECT_EQ(rd(5) & 0x02, 0);     // cleared by reading LSR
}

TEST_F(SerialTest, WideAndOutOfRangeAccessesAreSafe) {
    uint8_t buf[4] = {};
    uart.io_read(6, std::span(buf, 4));  // MSR, SCR, then two bytes past the device
    EXPECT_EQ(buf[2], 0xff);
    EXPECT_EQ(buf[3], 0xff);
    const uint8_t junk[4] = {1, 2, 3, 4};
    uart.io_write(7, std::span(junk, 4));
}
