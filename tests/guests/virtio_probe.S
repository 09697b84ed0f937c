# Reads the identification registers and the first config field (the capacity, for a disk) of
# the virtio-mmio device at 0xd0000000, prints them, and reboots.
.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov rbx, 0xd0000000
    lea rsi, [rip + s_magic]
    call puts
    mov eax, [rbx + 0x000]
    call puthex
    lea rsi, [rip + s_version]
    call puts
    mov eax, [rbx + 0x004]
    call putdec
    lea rsi, [rip + s_device]
    call puts
    mov eax, [rbx + 0x008]
    call putdec
    lea rsi, [rip + s_capacity]
    call puts
    mov eax, [rbx + 0x100]
    mov edx, [rbx + 0x104]
    shl rdx, 32
    or rax, rdx
    call putdec
    mov al, '\n'
    call putc
    jmp guest_exit
.include "common.inc"
s_magic: .asciz "VIRTIO magic="
s_version: .asciz " version="
s_device: .asciz " device="
s_capacity: .asciz " capacity="
