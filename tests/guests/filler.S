# Writes a non-zero qword into every page from 16 MiB to 1008 MiB (run with --memory 1G), prints
# "filled", then halts with interrupts off: an idle guest (as an idle Linux guest sits in hlt)
# whose memory is almost all non-zero but no longer changing. Spinning instead would keep a
# host core busy emulating the loop and take it from the migration being measured.
.intel_syntax noprefix
.code64

.set START, 0x1000000
.set END, 0x3f000000

.text
.global _start
_start:
    mov rbx, START
    mov rax, 0x5a5a5a5a00000001
1:  mov [rbx], rax
    add rbx, 4096
    cmp rbx, END
    jb 1b
    lea rsi, [rip + msg]
    call puts
    cli
2:  hlt
    jmp 2b
.include "common.inc"
msg: .asciz "filled\n"
