# Every vCPU prints a digest (FNV-1a) of the CPUID it sees, about every 2^28 TSC cycles:
# "cpu<N> cpuid <hex> tsc_khz <N>" (the timing leaf's TSC frequency). Leaves 0 to the highest basic one (subleaves 0-3), the hypervisor
# leaves 0x40000000-1 and 0x40000010 (the TSC frequency) and 0 to the highest extended one. A migrated guest must print the same
# digests on every host.
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
    mov r14d, edi
    call tsc
    mov r12, rax
1:  call next_tick
    call digest
    mov r15, rax
    call lock_print
    lea rsi, [rip + s_cpu]
    call puts
    mov rax, r14
    call putdec
    lea rsi, [rip + s_cpuid]
    call puts
    mov rax, r15
    call puthex
    lea rsi, [rip + s_tsc_khz]
    call puts
    mov eax, 0x40000010
    xor ecx, ecx
    cpuid
    mov eax, eax
    call putdec
    mov al, '\n'
    call putc
    call unlock_print
    jmp 1b

# digest: rax = FNV-1a over the CPUID outputs listed above. Clobbers rcx, rdx, rsi, r8-r11.
digest:
    push rbx
    mov r9d, 0x811c9dc5
    xor eax, eax
    xor ecx, ecx
    cpuid
    mov r10d, eax
    xor r11d, r11d
2:  xor r8d, r8d
3:  mov eax, r11d
    mov ecx, r8d
    cpuid
    call mix4
    inc r8d
    cmp r8d, 4
    jb 3b
    inc r11d
    cmp r11d, r10d
    jbe 2b
    mov r11d, 0x40000000
4:  mov eax, r11d
    xor ecx, ecx
    cpuid
    call mix4
    inc r11d
    cmp r11d, 0x40000001
    jbe 4b
    # The timing leaf: the TSC frequency in kHz (EAX) and the APIC bus's (EBX).
    mov eax, 0x40000010
    xor ecx, ecx
    cpuid
    call mix4
    mov eax, 0x80000000
    xor ecx, ecx
    cpuid
    mov r10d, eax
    mov r11d, 0x80000000
5:  mov eax, r11d
    xor ecx, ecx
    cpuid
    call mix4
    inc r11d
    cmp r11d, r10d
    jbe 5b
    mov eax, r9d
    pop rbx
    ret

# mix4: folds eax, ebx, ecx, edx into the hash in r9d. Clobbers rsi.
mix4:
    mov esi, eax
    call mix1
    mov esi, ebx
    call mix1
    mov esi, ecx
    call mix1
    mov esi, edx
    call mix1
    ret

mix1:
    xor r9d, esi
    imul r9d, r9d, 16777619
    ret

.include "smp.inc"
.include "common.inc"
s_cpu: .asciz "cpu"
s_cpuid: .asciz " cpuid "
s_tsc_khz: .asciz " tsc_khz "
