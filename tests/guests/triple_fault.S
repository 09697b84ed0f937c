# Takes an exception with no usable IDT: #UD -> #GP -> #DF -> triple fault (KVM_EXIT_SHUTDOWN).
.intel_syntax noprefix
.code64
.text
.global _start
_start:
    lea rsi, [rip + msg]
    call puts
    ud2
.include "common.inc"
msg: .asciz "about to triple fault\n"
