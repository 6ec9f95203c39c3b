/* start_rv32.S - RV32 bare-metal entry: gp, sp, .data copy, .bss zero, main(). Symbols come
 * from the linker script (gd32vf103.ld, sifive_e.ld). No interrupts: the HALs poll timers. */
    .section .init, "ax"
    .globl _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top__
    la a0, __data_load__
    la a1, __data_start__
    la a2, __data_end__
    beq a0, a1, 2f
1:  bgeu a1, a2, 2f
    lw t0, 0(a0)
    sw t0, 0(a1)
    addi a0, a0, 4
    addi a1, a1, 4
    j 1b
2:  la a1, __bss_start__
    la a2, __bss_end__
3:  bgeu a1, a2, 4f
    sw zero, 0(a1)
    addi a1, a1, 4
    j 3b
4:  call main
5:  j 5b
