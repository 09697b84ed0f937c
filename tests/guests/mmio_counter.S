# counter.S with MMIO between the bytes: before each byte of "1\n2\n3\n..." it reads the
# virtio-mmio magic register at 0xd0000000 (an MMIO read, into a register cleared first) and
# writes InterruptACK (an MMIO write of 0, which changes nothing), then polls the UART (an IN)
# and writes the byte (an OUT). Every exit is port I/O or MMIO, so a pause lands right after
# one of each kind. A magic value that did not land prints '!' instead of the byte, which
# breaks the count; so does a byte written twice or lost.
.intel_syntax noprefix
.code64

.set COM1_LSR, 0x3fd
.set LSR_THRE, 0x20
.set VIRTIO_MMIO, 0xd0000000
.set VIRTIO_MAGIC, 0x74726976
.set INTERRUPT_ACK, 0x064

.text
.global _start
_start:
    mov rbx, VIRTIO_MMIO
    xor r13, r13
1:  inc r13
    sub rsp, 32
    mov r8, rsp
    add r8, 31
    mov byte ptr [r8], '\n'
    mov rax, r13
    call fmtdec
3:  xor eax, eax
    mov eax, [rbx]
    cmp eax, VIRTIO_MAGIC
    jne 6f
    mov dword ptr [rbx + INTERRUPT_ACK], 0
    mov dx, COM1_LSR
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
6:  mov al, '!'
    call putc
    jmp 3b

.include "common.inc"
