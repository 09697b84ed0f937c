# Port I/O and MMIO dispatch: each access must reach the device that owns the address, and
# unowned addresses must read as all-ones. Prints "IO-OK" or "IO-FAIL <case>", then reboots.
.intel_syntax noprefix
.code64
.text
.global _start
_start:
    # 1. COM1 scratch register keeps what was written (serial device owns 0x3f8-0x3ff).
    mov dx, 0x3ff
    mov al, 0xa5
    out dx, al
    in al, dx
    cmp al, 0xa5
    lea rsi, [rip + case_scratch]
    jne fail
    # 2. COM1 line status: transmitter empty bits set (0x60), not the all-ones of an empty port.
    mov dx, 0x3fd
    in al, dx
    cmp al, 0x60
    lea rsi, [rip + case_lsr]
    jne fail
    # 3. The i8042 (0x60-0x64) answers 0 on its status port.
    in al, 0x64
    cmp al, 0
    lea rsi, [rip + case_i8042]
    jne fail
    # 4. COM2 (0x2f8) has no device: reads float high.
    mov dx, 0x2f8
    in al, dx
    cmp al, 0xff
    lea rsi, [rip + case_unowned_pio]
    jne fail
    # 5. Unowned MMIO in the device window reads as all-ones, 32 and 64 bits wide.
    mov rbx, 0xd0000000
    mov eax, [rbx + 0x10]
    cmp eax, 0xffffffff
    lea rsi, [rip + case_mmio32]
    jne fail
    mov rax, [rbx + 0x20]
    cmp rax, -1
    lea rsi, [rip + case_mmio64]
    jne fail
    # 6. Unowned MMIO writes are ignored (the VM keeps running).
    mov dword ptr [rbx + 0x30], 0x12345678
    lea rsi, [rip + ok]
    call puts
    jmp guest_exit
fail:
    push rsi
    lea rsi, [rip + failmsg]
    call puts
    pop rsi
    call puts
    mov al, '\n'
    call putc
    jmp guest_exit
.include "common.inc"
ok: .asciz "IO-OK\n"
failmsg: .asciz "IO-FAIL "
case_scratch: .asciz "com1-scratch"
case_lsr: .asciz "com1-lsr"
case_i8042: .asciz "i8042-status"
case_unowned_pio: .asciz "unowned-pio"
case_mmio32: .asciz "unowned-mmio32"
case_mmio64: .asciz "unowned-mmio64"
