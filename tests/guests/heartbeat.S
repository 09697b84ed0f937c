# Heartbeat on every vCPU. The boot CPU starts the others the way a PC does (INIT, then
# STARTUP IPIs through the local APIC; they begin in real mode at the trampoline at 0xf000 and
# switch themselves to long mode). Each CPU then prints "cpu<N> tick <K>" about every 2^28 TSC
# cycles, under a spinlock so lines do not interleave. Never exits.
.intel_syntax noprefix
.code64

.set APIC_BASE, 0xfee00000
.set ICR_LOW, 0x300
.set ICR_HIGH, 0x310
.set SVR, 0xf0
.set IPI_INIT_ALL_BUT_SELF, 0x000c4500
.set IPI_SIPI_ALL_BUT_SELF, 0x000c460f   # vector 0x0f -> 0xf000
.set STACKS, 0x80000                      # per-CPU stacks: STACKS + (index + 1) * 4096
.set TICK_SHIFT, 28

.section .trampoline, "ax"
.code16
ap_real:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [tramp_gdtr]
    mov eax, cr4
    or eax, 0x20                  # PAE
    mov cr4, eax
    mov eax, 0x9000               # the VMM's identity page tables
    mov cr3, eax
    mov ecx, 0xc0000080           # EFER
    rdmsr
    or eax, 0x100                 # LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000001            # PG | PE
    mov cr0, eax
.att_syntax
    ljmpl $0x08, $ap_long
.intel_syntax noprefix
.code64
ap_long:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 1
    lock xadd [cpu_count], eax
    mov edi, eax
    jmp cpu_main_abs
cpu_main_abs:
    movabs rax, offset cpu_main
    jmp rax
.p2align 3
tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff      # 64-bit code
    .quad 0x00cf92000000ffff      # data
tramp_gdtr:
    .word 23
    .long tramp_gdt

.text
.global _start
_start:
    mov dword ptr [rip + cpu_count], 1
    mov rbx, APIC_BASE
    mov eax, [rbx + SVR]
    or eax, 0x1ff                 # software-enable the local APIC
    mov [rbx + SVR], eax
    mov dword ptr [rbx + ICR_HIGH], 0
    mov dword ptr [rbx + ICR_LOW], IPI_INIT_ALL_BUT_SELF
    mov dword ptr [rbx + ICR_LOW], IPI_SIPI_ALL_BUT_SELF
    mov dword ptr [rbx + ICR_LOW], IPI_SIPI_ALL_BUT_SELF
    xor edi, edi
    jmp cpu_main

# edi = CPU index
cpu_main:
    mov eax, edi
    inc eax
    shl eax, 12
    add eax, STACKS
    mov esp, eax
    mov r14d, edi                 # index
    xor r13, r13                  # tick count
    call tsc
    mov r12, rax                  # next deadline
1:  mov rcx, 1
    shl rcx, TICK_SHIFT
    add r12, rcx
2:  pause
    call tsc
    cmp rax, r12
    jb 2b
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

lock_print:
    mov eax, 1
1:  xchg eax, [rip + print_lock]
    test eax, eax
    jz 2f
    pause
    jmp 1b
2:  ret

unlock_print:
    mov dword ptr [rip + print_lock], 0
    ret

.include "common.inc"
s_cpu: .asciz "cpu"
s_tick: .asciz " tick "

.data
.p2align 2
cpu_count: .long 0
print_lock: .long 0
