# Heartbeat on every vCPU: each prints "cpu<N> tick <K>" about every 2^28 TSC cycles, under a
# print lock so lines do not interleave. Never exits.
.intel_syntax noprefix
.code64

.text
.global _start
_start:
    call start_aps
    xor edi, edi
    jmp cpu_main

# edi = CPU index
cpu_main:
    call set_stack
    mov r14d, edi                 # index
    xor r13, r13                  # tick count
    call tsc
    mov r12, rax                  # next deadline
1:  call next_tick
    inc r13
    call lock_print
    lea rsi, [rip + s_cpu]
    call puts
    mov rax, r14
    call putdec
    lea rsi, [rip + s_tick]
    call puts
    mov rax, r13
    call putdec
    mov al, '\n'
    call putc
    call unlock_print
    jmp 1b

.include "smp.inc"
.include "common.inc"
s_cpu: .asciz "cpu"
s_tick: .asciz " tick "
