/*
 * hal_gd32vf103.c - GigaDevice GD32VF103 (RV32IMAC Bumblebee core, e.g. Longan Nano), register
 * level, no vendor library: USART0 on PA9/PA10 at 115200 8N1, the core timer (mtime, clocked at
 * HCLK/4) for milliseconds, mcycle for INFER, and the flash memory controller (FMC) for the
 * weight slots in the 1 KiB pages after the image (__storage_start__ .. end of flash).
 *
 * Clocks: runs on the 8 MHz IRC8M the chip starts with (no PLL setup), so HCLK = 8 MHz.
 * Written from the GD32VF103 user manual; compiled and size-checked here, not run on hardware.
 */
#include <stdint.h>

#include "es_app.h"
#include "es_hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define HCLK_HZ 8000000u
#define RCU_BASE 0x40021000u
#define RCU_APB2EN REG(RCU_BASE + 0x18u)
#define RCU_APB2EN_PAEN (1u << 2)
#define RCU_APB2EN_USART0EN (1u << 14)
#define GPIOA_CTL1 REG(0x40010804u) /* pins 8..15 */
#define USART0_BASE 0x40013800u
#define USART_STAT REG(USART0_BASE + 0x00u)
#define USART_DATA REG(USART0_BASE + 0x04u)
#define USART_BAUD REG(USART0_BASE + 0x08u)
#define USART_CTL0 REG(USART0_BASE + 0x0Cu)
#define USART_STAT_RBNE (1u << 5)
#define USART_STAT_TBE (1u << 7)
#define USART_STAT_ORERR (1u << 3)
#define MTIMER_LO REG(0xD1000000u)
#define MTIMER_HI REG(0xD1000004u)
#define MTIMER_HZ (HCLK_HZ / 4u)

#define FMC_BASE 0x40022000u
#define FMC_KEY REG(FMC_BASE + 0x04u)
#define FMC_STAT REG(FMC_BASE + 0x0Cu)
#define FMC_CTL REG(FMC_BASE + 0x10u)
#define FMC_ADDR REG(FMC_BASE + 0x14u)
#define FMC_STAT_BUSY (1u << 0)
#define FMC_STAT_PGERR (1u << 2)
#define FMC_STAT_WPERR (1u << 4)
#define FMC_STAT_ENDF (1u << 5)
#define FMC_CTL_PG (1u << 0)
#define FMC_CTL_PER (1u << 1)
#define FMC_CTL_START (1u << 6)
#define FMC_CTL_LK (1u << 7)
#define FLASH_PAGE 1024u

extern uint8_t __storage_start__[], __storage_end__[];
static uint32_t flash_ops;

void hal_init(void)
{
    uint32_t ctl;
    RCU_APB2EN |= RCU_APB2EN_PAEN | RCU_APB2EN_USART0EN;
    /* PA9 = TX: alternate push-pull 50 MHz (0xB); PA10 = RX: floating input (0x4) */
    ctl = GPIOA_CTL1;
    ctl &= ~((0xFu << 4) | (0xFu << 8));
    ctl |= (0xBu << 4) | (0x4u << 8);
    GPIOA_CTL1 = ctl;
    USART_BAUD = (HCLK_HZ + 115200u / 2u) / 115200u;
    USART_CTL0 = (1u << 13) | (1u << 3) | (1u << 2); /* UEN, TEN, REN */
}

static uint64_t mtimer(void)
{
    uint32_t hi, lo;
    do {
        hi = MTIMER_HI;
        lo = MTIMER_LO;
    } while (hi != MTIMER_HI);
    return ((uint64_t)hi << 32) | lo;
}

uint32_t hal_millis(void)
{
    return (uint32_t)(mtimer() / (MTIMER_HZ / 1000u));
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
        uint32_t stat = USART_STAT;
        if (stat & (USART_STAT_RBNE | USART_STAT_ORERR)) {
            *byte = (uint8_t)USART_DATA; /* reading DATA also clears an overrun */
            if (stat & USART_STAT_RBNE) {
                return 1;
            }
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
        while ((USART_STAT & USART_STAT_TBE) == 0u) {
        }
        USART_DATA = data[i];
    }
}

const char *hal_board_name(void)
{
    return "gd32vf103";
}

const uint8_t *hal_flash_base(void)
{
    return __storage_start__;
}

uint32_t hal_flash_size(void)
{
    return (uint32_t)(__storage_end__ - __storage_start__);
}

uint32_t hal_flash_sector_size(void)
{
    return FLASH_PAGE;
}

uint32_t hal_flash_program_unit(void)
{
    return 4u; /* the FMC programs 32-bit words */
}

uint32_t hal_flash_op_count(void)
{
    return flash_ops;
}

static void fmc_unlock(void)
{
    if (FMC_CTL & FMC_CTL_LK) {
        FMC_KEY = 0x45670123u;
        FMC_KEY = 0xCDEF89ABu;
    }
}

static int fmc_wait(void)
{
    uint32_t stat;
    while (FMC_STAT & FMC_STAT_BUSY) {
    }
    stat = FMC_STAT;
    FMC_STAT = FMC_STAT_ENDF | FMC_STAT_PGERR | FMC_STAT_WPERR; /* write 1 to clear */
    return (stat & (FMC_STAT_PGERR | FMC_STAT_WPERR)) ? -1 : 0;
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    uint32_t page;
    int rc = 0;
    if (offset % FLASH_PAGE != 0u || len % FLASH_PAGE != 0u || offset > hal_flash_size() ||
        len > hal_flash_size() - offset) {
        return -1;
    }
    flash_ops++;
    fmc_unlock();
    for (page = 0; page < len && rc == 0; page += FLASH_PAGE) {
        FMC_CTL |= FMC_CTL_PER;
        FMC_ADDR = (uint32_t)(__storage_start__ + offset + page);
        FMC_CTL |= FMC_CTL_START;
        rc = fmc_wait();
        FMC_CTL &= ~FMC_CTL_PER;
    }
    FMC_CTL |= FMC_CTL_LK;
    return rc;
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint32_t i;
    int rc = 0;
    if (offset % 4u != 0u || offset > hal_flash_size() || len > hal_flash_size() - offset) {
        return -1;
    }
    flash_ops++;
    fmc_unlock();
    FMC_CTL |= FMC_CTL_PG;
    for (i = 0; i < len && rc == 0; i += 4u) {
        uint32_t word = 0xFFFFFFFFu; /* a trailing partial word is padded with erased bytes */
        uint32_t k;
        for (k = 0; k < 4u && i + k < len; ++k) {
            word &= ~((uint32_t)0xFFu << (8u * k)) | ((uint32_t)data[i + k] << (8u * k));
        }
        *(volatile uint32_t *)(__storage_start__ + offset + i) = word;
        rc = fmc_wait();
    }
    FMC_CTL &= ~FMC_CTL_PG;
    FMC_CTL |= FMC_CTL_LK;
    return rc;
}

void hal_reset(void)
{
    /* ECLIC has no software reset; the watchdog would need setup: restart the app in place */
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
