# Counts on COM1 as fast as it can: "1\n2\n3\n..." forever, polling the line status register
# (an IN) before every byte it writes (an OUT), as a real driver does. Every exit of this
# guest is port I/O, so a pause lands right after one: migrated, the joined output of every
# host must be the unbroken sequence, each byte exactly once.
.intel_syntax noprefix
.code64

.set COM1_LSR, 0x3fd
.set LSR_THRE, 0x20

.text
.global _start
_start:
    xor r13, r13
1:  inc r13
    sub rsp, 32
    mov r8, rsp
    add r8, 31
    mov byte ptr [r8], '\n'
    mov rax, r13
    call fmtdec
3:  mov dx, COM1_LSR
4:  in al, dx
    test al, LSR_THRE
    jz 4b
    mov al, [r8]
    call putc
    cmp byte ptr [r8], '\n'
    je 5f
    inc r8
    jmp 3b
5:  add rsp, 32
    jmp 1b

.include "common.inc"
