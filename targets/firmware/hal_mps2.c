/*
 * hal_mps2.c - QEMU mps2-an500 (Cortex-M7): CMSDK APB UART0, SysTick time base, flash simulated
 * in PSRAM (the board has no flash; QEMU keeps PSRAM across a system reset).
 *
 * hal_cycles() counts QEMU virtual nanoseconds (SysTick at the 25 MHz system clock, x40):
 * under `qemu-system-arm -icount shift=0` one instruction takes one virtual nanosecond, so
 * INFER's cycles are the instructions executed. QEMU does not implement the DWT cycle counter.
 */
#include <stdint.h>

#include "es_app.h"
#include "es_hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0_BASE 0x40004000u
#define UART_DATA REG(UART0_BASE + 0x0u)
#define UART_STATE REG(UART0_BASE + 0x4u)
#define UART_CTRL REG(UART0_BASE + 0x8u)
#define UART_BAUDDIV REG(UART0_BASE + 0x10u)
#define UART_STATE_TX_FULL 0x1u
#define UART_STATE_RX_FULL 0x2u

#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_AIRCR REG(0xE000ED0Cu)

#define SYSCLK_HZ 25000000u
#define TICKS_PER_MS (SYSCLK_HZ / 1000u)
#define NS_PER_TICK 40u

#define FLASH_BASE 0x60000000u
#define FLASH_SECTOR 4096u
#ifndef ES_MPS2_SLOT_BYTES
#define ES_MPS2_SLOT_BYTES (1024u * 1024u)
#endif
#define FLASH_BYTES (2u * FLASH_SECTOR + 2u * ES_MPS2_SLOT_BYTES)

/* 16 is the smallest divider the CMSDK UART accepts (1.56 Mbaud at 25 MHz) */
#ifndef ES_MPS2_BAUDDIV
#define ES_MPS2_BAUDDIV 16u
#endif
#ifndef ES_MPS2_POLL_PAUSE
#define ES_MPS2_POLL_PAUSE 64u
#endif

static volatile uint32_t ms_ticks;
static uint32_t flash_ops;

void SysTick_Handler(void);
void SysTick_Handler(void)
{
    ms_ticks++;
}

void hal_init(void)
{
    UART_BAUDDIV = ES_MPS2_BAUDDIV;
    UART_CTRL = 0x3u; /* TX + RX enable */
    SYST_RVR = TICKS_PER_MS - 1u;
    SYST_CVR = 0;
    SYST_CSR = 0x7u; /* processor clock, interrupt, enable */
}

uint32_t hal_millis(void)
{
    return ms_ticks;
}

uint32_t hal_cycles(void)
{
    uint32_t ms, cvr;
    do { /* read a consistent (ms, counter) pair */
        ms = ms_ticks;
        cvr = SYST_CVR;
    } while (ms != ms_ticks);
    return (ms * TICKS_PER_MS + (TICKS_PER_MS - 1u - cvr)) * NS_PER_TICK;
}

/* Between polls of an empty UART, spin without touching MMIO: under QEMU every device access
 * takes the global lock that its I/O thread needs to deliver the next received byte, so a tight
 * polling loop starves the very input it waits for. */
static void poll_pause(void)
{
    volatile uint32_t n;
    for (n = 0; n < ES_MPS2_POLL_PAUSE; ++n) {
    }
}

int hal_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    uint32_t start = ms_ticks;
    for (;;) {
        if (UART_STATE & UART_STATE_RX_FULL) {
            *byte = (uint8_t)UART_DATA;
            return 1;
        }
        if (ms_ticks - start >= timeout_ms) {
            return 0;
        }
        poll_pause();
    }
}

void hal_uart_write(const uint8_t *data, uint32_t len)
{
    uint32_t i;
    for (i = 0; i < len; ++i) {
        while (UART_STATE & UART_STATE_TX_FULL) {
        }
        UART_DATA = data[i];
    }
}

const char *hal_board_name(void)
{
    return "mps2-an500";
}

const uint8_t *hal_flash_base(void)
{
    return (const uint8_t *)FLASH_BASE;
}

uint32_t hal_flash_size(void)
{
    return FLASH_BYTES;
}

uint32_t hal_flash_sector_size(void)
{
    return FLASH_SECTOR;
}

uint32_t hal_flash_program_unit(void)
{
    return 1;
}

uint32_t hal_flash_op_count(void)
{
    return flash_ops;
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    volatile uint8_t *p = (volatile uint8_t *)(FLASH_BASE + offset);
    uint32_t i;
    if (offset % FLASH_SECTOR != 0u || len % FLASH_SECTOR != 0u || offset > FLASH_BYTES ||
        len > FLASH_BYTES - offset) {
        return -1;
    }
    flash_ops++;
    for (i = 0; i < len; ++i) {
        p[i] = 0xFFu;
    }
    return 0;
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    volatile uint8_t *p = (volatile uint8_t *)(FLASH_BASE + offset);
    uint32_t i;
    if (offset > FLASH_BYTES || len > FLASH_BYTES - offset) {
        return -1;
    }
    flash_ops++;
    for (i = 0; i < len; ++i) {
        p[i] &= data[i]; /* NOR semantics, like the real boards */
    }
    return 0;
}

void hal_reset(void)
{
    hal_uart_write((const uint8_t *)"", 0);
    SCB_AIRCR = 0x05FA0004u; /* SYSRESETREQ: QEMU resets the machine and reloads the image */
    for (;;) {
    }
}

int main(void)
{
    hal_init();
    es_app_run();
    return 0;
}
