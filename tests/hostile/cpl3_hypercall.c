/* A hypercall from the guest's user space (CPL 3), through the port Enlighten's hypercall
 * page uses, with the I/O permission the guest kernel gives root (ioperm): the host must
 * refuse it with HV_STATUS_ACCESS_DENIED (6), as Hyper-V allows hypercalls at CPL 0 only
 * (reliability review B8). Prints "CPL3-HYPERCALL status=N"; exit 0 when it could ask.
 * Built static by tests/e2e/test_hostile.py and carried into the hostile guest's initrd. */
#include <stdint.h>
#include <stdio.h>
#include <sys/io.h>

#define HYPERCALL_PORT 0x5c /* layout::kHypercallPort */
#define HV_POST_MESSAGE 0x005c

int main(void) {
    if (ioperm(HYPERCALL_PORT, 4, 1) != 0) {
        perror("ioperm");
        return 2;
    }
    uint64_t control = HV_POST_MESSAGE, input = 0;
    register uint64_t output __asm__("r8") = 0;
    uint32_t status;
    /* the hypercall page's slow path: in eax, imm8 (RCX control, RDX input GPA, R8 output) */
    __asm__ volatile("inl %[port], %%eax"
                     : "=a"(status)
                     : [port] "i"(HYPERCALL_PORT), "c"(control), "d"(input), "r"(output)
                     : "memory");
    printf("CPL3-HYPERCALL status=%u\n", status & 0xffff);
    return 0;
}
