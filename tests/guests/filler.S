# Writes a non-zero qword into every page from 16 MiB to 1008 MiB (run with --memory 1G), prints
# "filled", then idles: a guest whose memory is almost all non-zero but no longer changing.
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
2:  pause
    jmp 2b
.include "common.inc"
msg: .asciz "filled\n"
