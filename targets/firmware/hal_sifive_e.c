/*
 * hal_sifive_e.c - qemu-system-riscv32 -M sifive_e (SiFive E31 memory map, RV32IMAC): the
 * GD32VF103 build's code on an emulated board, for tests. UART0 at 0x10013000, CLINT mtime at
 * 32768 Hz, mcycle for INFER. The XIP flash is read-only in QEMU, so there is no slot storage:
 * only the compiled-in model runs (slot commands answer ERR FLASH).
 */
#include <stdint.h>

#include "es_app.h"
#include "es_hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))
#define UART0 0x10013000u
#define UART_TXDATA REG(UART0 + 0x00u)
#define UART_RXDATA REG(UART0 + 0x04u)
#define UART_TXCTRL REG(UART0 + 0x08u)
#define UART_RXCTRL REG(UART0 + 0x0Cu)
#define UART_DIV REG(UART0 + 0x18u)
#define MTIME_LO REG(0x0200BFF8u)
#define MTIME_HI REG(0x0200BFFCu)
/* QEMU's CLINT on sifive_e ticks at the 32768 Hz low-frequency clock (SIFIVE_E_LFCLK_DEFAULT_FREQ) */
#define MTIME_HZ 32768u

void hal_init(void)
{
    UART_DIV = 138u; /* 16 MHz / 115200; QEMU ignores it */
    UART_TXCTRL = 1u;
    UART_RXCTRL = 1u;
}

uint32_t hal_millis(void)
{
    uint32_t hi, lo;
    do {
        hi = MTIME_HI;
        lo = MTIME_LO;
    } while (hi != MTIME_HI);
    return (uint32_t)(((((uint64_t)hi << 32) | lo) * 1000u) / MTIME_HZ);
}

uint32_t hal_cycles(void)
{
    uint32_t c;
    __asm__ volatile("csrr %0, mcycle" : "=r"(c));
    return c;
}

int hal_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    uint32_t start = hal_millis();
    for (;;) {
        uint32_t v = UART_RXDATA; /* bit 31: empty; reading pops the FIFO */
        if ((v & 0x80000000u) == 0u) {
            *byte = (uint8_t)v;
            return 1;
        }
        if (hal_millis() - start >= timeout_ms) {
            return 0;
        }
    }
}

void hal_uart_write(const uint8_t *data, uint32_t len)
{
    uint32_t i;
    for (i = 0; i < len; ++i) {
        while (UART_TXDATA & 0x80000000u) {
        }
        UART_TXDATA = data[i];
    }
}

const char *hal_board_name(void)
{
    return "gd32vf103-qemu";
}

const uint8_t *hal_flash_base(void)
{
    return (const uint8_t *)0;
}

uint32_t hal_flash_size(void)
{
    return 0;
}

uint32_t hal_flash_sector_size(void)
{
    return 4096u;
}

uint32_t hal_flash_program_unit(void)
{
    return 1;
}

uint32_t hal_flash_op_count(void)
{
    return 0;
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    (void)offset;
    (void)len;
    return -1;
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    (void)offset;
    (void)data;
    (void)len;
    return -1;
}

void hal_reset(void)
{
    /* no reset controller modelled: restart the app in place */
    __asm__ volatile("j _start");
    for (;;) {
    }
}

int main(void)
{
    hal_init();
    es_app_run();
    return 0;
}
