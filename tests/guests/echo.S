# Echoes what arrives on COM1: prints "echo ready", then every byte received is written
# back in upper case (so the test tells the guest's answer from its own input). A '.' ends
# the line "echo done" and resets the VM (the VMM exits 0).
.intel_syntax noprefix
.code64
.text
.global _start
_start:
    lea rsi, [rip + ready]
    call puts
wait_byte:
    mov dx, 0x3fd             # COM1 line status: bit 0 = data ready
    in al, dx
    test al, 1
    jz wait_byte
    mov dx, 0x3f8
    in al, dx
    cmp al, '.'
    je done
    cmp al, 'a'
    jb 1f
    cmp al, 'z'
    ja 1f
    sub al, 0x20
1:  call putc
    jmp wait_byte
done:
    lea rsi, [rip + bye]
    call puts
    jmp guest_exit
.include "common.inc"
ready: .asciz "echo ready\n"
bye: .asciz "\necho done\n"
