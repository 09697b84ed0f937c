# Prints "tick <K>" about every 2^28 TSC cycles and resets the machine (i8042) after tick 30
# (a few seconds): a guest that ends by itself while the test migrates it.
.intel_syntax noprefix
.code64

.set LAST_TICK, 30

.text
.global _start
_start:
    xor r13, r13                  # tick count
    call tsc
    mov r12, rax                  # next deadline
1:  call next_tick
    inc r13
    lea rsi, [rip + s_tick]
    call puts
    mov rax, r13
    call putdec
    mov al, '\n'
    call putc
    cmp r13, LAST_TICK
    jb 1b
    lea rsi, [rip + s_reset]
    call puts
    jmp guest_exit

.include "common.inc"
s_tick: .asciz "tick "
s_reset: .asciz "resetting now\n"
