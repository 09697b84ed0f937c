# Prints a greeting on COM1 and reboots (the VMM exits 0).
.intel_syntax noprefix
.code64
.text
.global _start
_start:
    lea rsi, [rip + msg]
    call puts
    jmp guest_exit
.include "common.inc"
msg: .asciz "Hello from a tiny guest\n"
