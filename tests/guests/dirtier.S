# Memory dirtier with self-check, on every vCPU: CPU N owns 8 MiB at 16 MiB + N * 8 MiB (2048
# pages). Pass G writes G and the page's identity into the first qword of each page, after
# checking the page still holds what pass G-1 wrote there. A page that lost a write (a migration
# that forgot a dirty page) prints "CORRUPT cpu<N> page <P>" and stops that CPU. Every 16
# passes it prints "cpu<N> pass <G> ok". Never exits. Holds a 64-byte marker (secret_marker) that
# the security tests look for in captures of the migration stream.
.intel_syntax noprefix
.code64

.set REGION, 0x1000000
.set REGION_SHIFT, 23            # 8 MiB per CPU
.set PAGES, 2048

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
    mov r15, r14
    shl r15, REGION_SHIFT
    add r15, REGION               # base of this CPU's region
    mov r13, 1                    # pass G
pass:
    xor ecx, ecx                  # page
1:  mov rbx, rcx
    shl rbx, 12
    add rbx, r15                  # page address
    mov rdx, r14
    shl rdx, 16
    or rdx, rcx                   # identity: cpu << 16 | page
    mov rax, r13
    dec rax
    shl rax, 32
    or rax, rdx                   # expected: (G-1) << 32 | identity
    cmp r13, 1
    jne 2f
    xor eax, eax                  # pass 1 finds fresh (zero) memory
2:  cmp [rbx], rax
    jne corrupt
    mov rax, r13
    shl rax, 32
    or rax, rdx
    mov [rbx], rax
    inc ecx
    cmp ecx, PAGES
    jb 1b
    test r13, 15
    jnz 3f
    call lock_print
    lea rsi, [rip + s_cpu]
    call puts
    mov rax, r14
    call putdec
    lea rsi, [rip + s_pass]
    call puts
    mov rax, r13
    call putdec
    lea rsi, [rip + s_ok]
    call puts
    call unlock_print
3:  inc r13
    jmp pass

corrupt:
    mov r12, rcx
    call lock_print
    lea rsi, [rip + s_corrupt]
    call puts
    mov rax, r14
    call putdec
    lea rsi, [rip + s_page]
    call puts
    mov rax, r12
    call putdec
    lea rsi, [rip + s_found]
    call puts
    mov rax, [rbx]
    call puthex
    mov al, '\n'
    call putc
    call unlock_print
4:  pause
    jmp 4b

.include "smp.inc"
.include "common.inc"
s_cpu: .asciz "cpu"
s_pass: .asciz " pass "
s_ok: .asciz " ok\n"
s_corrupt: .asciz "CORRUPT cpu"
s_page: .asciz " page "
s_found: .asciz " found "
# 64 bytes the security tests look for in captures of the migration stream (never printed).
.global secret_marker
secret_marker: .ascii "vmm-test-guest-secret:0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
