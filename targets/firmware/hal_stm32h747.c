/*
 * hal_stm32h747.c - STM32H747 Cortex-M7 core, register level (no HAL/CubeMX library):
 * USART1 on PA9/PA10 (the ST-LINK virtual COM port of the STM32H747I-DISCO) at 115200 8N1,
 * SysTick 1 ms, DWT CYCCNT for INFER cycles, flash bank 2 (8 x 128 KiB sectors, 256-bit flash
 * words) as the weight-slot storage, QUADSPI memory-mapped at 0x90000000 for large weights.
 *
 * Clocks: the HSI (64 MHz) the chip starts on; no PLL setup. Written from RM0399; compiled and
 * size-checked here, not run on hardware (no H7 model in QEMU).
 */
#include <stdint.h>

#include "es_app.h"
#include "es_hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define HSI_HZ 64000000u
#define RCC_BASE 0x58024400u
#define RCC_AHB3ENR REG(RCC_BASE + 0xD4u)
#define RCC_AHB4ENR REG(RCC_BASE + 0xE0u)
#define RCC_APB2ENR REG(RCC_BASE + 0xF0u)
#define GPIOA_BASE 0x58020000u
#define GPIO_MODER(b) REG((b) + 0x00u)
#define GPIO_AFRH(b) REG((b) + 0x24u)

#define USART1_BASE 0x40011000u
#define USART_CR1 REG(USART1_BASE + 0x00u)
#define USART_BRR REG(USART1_BASE + 0x0Cu)
#define USART_ISR REG(USART1_BASE + 0x1Cu)
#define USART_ICR REG(USART1_BASE + 0x20u)
#define USART_RDR REG(USART1_BASE + 0x24u)
#define USART_TDR REG(USART1_BASE + 0x28u)
#define USART_ISR_ORE (1u << 3)
#define USART_ISR_RXNE (1u << 5)
#define USART_ISR_TXE (1u << 7)

#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_AIRCR REG(0xE000ED0Cu)
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)

/* flash bank 2 registers (RM0399 section 4.9) */
#define FLASH_R 0x52002000u
#define FLASH_KEYR2 REG(FLASH_R + 0x104u)
#define FLASH_CR2 REG(FLASH_R + 0x10Cu)
#define FLASH_SR2 REG(FLASH_R + 0x110u)
#define FLASH_CCR2 REG(FLASH_R + 0x114u)
#define FLASH_CR_LOCK (1u << 0)
#define FLASH_CR_PG (1u << 1)
#define FLASH_CR_SER (1u << 2)
#define FLASH_CR_PSIZE_64 (3u << 4)
#define FLASH_CR_START (1u << 7)
#define FLASH_CR_SNB_SHIFT 8u
#define FLASH_SR_BSY (1u << 0)
#define FLASH_SR_QW (1u << 2)
#define FLASH_SR_ERRORS 0x0FEE0000u
#define BANK2_BASE 0x08100000u
#define BANK2_BYTES (1024u * 1024u)
#define SECTOR_BYTES (128u * 1024u)
#define FLASH_WORD 32u

/* QUADSPI (RM0399 section 23), memory-mapped fast read quad I/O (0xEB) */
#define QSPI_R 0x52005000u
#define QSPI_CR REG(QSPI_R + 0x00u)
#define QSPI_DCR REG(QSPI_R + 0x04u)
#define QSPI_SR REG(QSPI_R + 0x08u)
#define QSPI_CCR REG(QSPI_R + 0x14u)

static volatile uint32_t ms_ticks;
static uint32_t flash_ops;

void SysTick_Handler(void);
void SysTick_Handler(void)
{
    ms_ticks++;
}

static void qspi_memory_mapped(void)
{
    RCC_AHB3ENR |= 1u << 14; /* QSPIEN; pins (PB2, PG6, PD11-13, PE2) configured by the board */
    QSPI_CR = (1u << 24) | (3u << 8) | (1u << 0); /* prescaler 2, FIFO threshold 4, enable */
    QSPI_DCR = (26u << 16); /* 2^(26+1) = 128 MiB */
    while (QSPI_SR & (1u << 5)) {
    }
    /* FMODE=11 memory-mapped, DMODE quad, DCYC 6, ADSIZE 32-bit, ADMODE quad, IMODE single, 0xEB */
    QSPI_CCR = (3u << 26) | (3u << 24) | (6u << 18) | (3u << 12) | (3u << 10) | (1u << 8) | 0xEBu;
}

void hal_init(void)
{
    uint32_t v;
    RCC_AHB4ENR |= 1u << 0;  /* GPIOA */
    RCC_APB2ENR |= 1u << 4;  /* USART1 */
    v = GPIO_MODER(GPIOA_BASE);
    v &= ~((3u << 18) | (3u << 20));
    v |= (2u << 18) | (2u << 20); /* PA9, PA10 alternate function */
    GPIO_MODER(GPIOA_BASE) = v;
    v = GPIO_AFRH(GPIOA_BASE);
    v &= ~((0xFu << 4) | (0xFu << 8));
    v |= (7u << 4) | (7u << 8); /* AF7 = USART1 */
    GPIO_AFRH(GPIOA_BASE) = v;
    USART_BRR = (HSI_HZ + 115200u / 2u) / 115200u;
    USART_CR1 = (1u << 3) | (1u << 2) | (1u << 0); /* TE, RE, UE */
    SYST_RVR = HSI_HZ / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 0x7u;
    DEMCR |= 1u << 24; /* TRCENA */
    DWT_LAR = 0xC5ACCE55u;
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
    qspi_memory_mapped();
}

uint32_t hal_millis(void)
{
    return ms_ticks;
}

uint32_t hal_cycles(void)
{
    return DWT_CYCCNT;
}

int hal_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    uint32_t start = ms_ticks;
    for (;;) {
        uint32_t isr = USART_ISR;
        if (isr & USART_ISR_ORE) {
            USART_ICR = USART_ISR_ORE; /* a lost byte: the frame CRC catches it */
        }
        if (isr & USART_ISR_RXNE) {
            *byte = (uint8_t)USART_RDR;
            return 1;
        }
        if (ms_ticks - start >= timeout_ms) {
            return 0;
        }
    }
}

void hal_uart_write(const uint8_t *data, uint32_t len)
{
    uint32_t i;
    for (i = 0; i < len; ++i) {
        while ((USART_ISR & USART_ISR_TXE) == 0u) {
        }
        USART_TDR = data[i];
    }
    while ((USART_ISR & (1u << 6)) == 0u) { /* TC: last byte on the wire before a reset */
    }
}

const char *hal_board_name(void)
{
    return "stm32h747";
}

const uint8_t *hal_flash_base(void)
{
    return (const uint8_t *)BANK2_BASE;
}

uint32_t hal_flash_size(void)
{
    return BANK2_BYTES;
}

uint32_t hal_flash_sector_size(void)
{
    return SECTOR_BYTES;
}

uint32_t hal_flash_program_unit(void)
{
    return FLASH_WORD;
}

uint32_t hal_flash_op_count(void)
{
    return flash_ops;
}

static void flash_unlock(void)
{
    if (FLASH_CR2 & FLASH_CR_LOCK) {
        FLASH_KEYR2 = 0x45670123u;
        FLASH_KEYR2 = 0xCDEF89ABu;
    }
}

static int flash_wait(void)
{
    uint32_t sr;
    while (FLASH_SR2 & (FLASH_SR_BSY | FLASH_SR_QW)) {
    }
    sr = FLASH_SR2;
    FLASH_CCR2 = sr & FLASH_SR_ERRORS;
    return (sr & FLASH_SR_ERRORS) ? -1 : 0;
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    uint32_t s;
    int rc = 0;
    if (offset % SECTOR_BYTES != 0u || len % SECTOR_BYTES != 0u || offset > BANK2_BYTES ||
        len > BANK2_BYTES - offset) {
        return -1;
    }
    flash_ops++;
    flash_unlock();
    for (s = offset / SECTOR_BYTES; s < (offset + len) / SECTOR_BYTES && rc == 0; ++s) {
        FLASH_CR2 = FLASH_CR_SER | FLASH_CR_PSIZE_64 | (s << FLASH_CR_SNB_SHIFT);
        FLASH_CR2 |= FLASH_CR_START;
        rc = flash_wait();
    }
    FLASH_CR2 = FLASH_CR_LOCK;
    return rc;
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint32_t i, k;
    int rc = 0;
    if (offset % FLASH_WORD != 0u || offset > BANK2_BYTES || len > BANK2_BYTES - offset) {
        return -1;
    }
    flash_ops++;
    flash_unlock();
    FLASH_CR2 = FLASH_CR_PG | FLASH_CR_PSIZE_64;
    for (i = 0; i < len && rc == 0; i += FLASH_WORD) {
        volatile uint32_t *dst = (volatile uint32_t *)(BANK2_BASE + offset + i);
        for (k = 0; k < FLASH_WORD / 4u; ++k) { /* 8 words fill one flash word; pad with 0xFF */
            uint32_t w = 0xFFFFFFFFu;
            uint32_t b;
            for (b = 0; b < 4u; ++b) {
                uint32_t at = i + 4u * k + b;
                if (at < len) {
                    w &= ~((uint32_t)0xFFu << (8u * b)) | ((uint32_t)data[at] << (8u * b));
                }
            }
            dst[k] = w;
        }
        __asm__ volatile("dsb" ::: "memory");
        rc = flash_wait();
    }
    FLASH_CR2 = FLASH_CR_LOCK;
    return rc;
}

void hal_reset(void)
{
    __asm__ volatile("dsb" ::: "memory");
    SCB_AIRCR = 0x05FA0004u; /* SYSRESETREQ */
    for (;;) {
    }
}

int main(void)
{
    hal_init();
    es_app_run();
    return 0;
}
