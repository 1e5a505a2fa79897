/* A 32-bit system call from 64-bit code: int 0x80 takes the i386 numbers and returns
 * -errno in eax (the kernel clobbers r8-r11). */
#ifndef MSTACK_TEST_INT80_H
#define MSTACK_TEST_INT80_H

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

#endif
