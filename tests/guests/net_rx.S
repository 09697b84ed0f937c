# A minimal virtio-net driver (virtio-mmio version 2, VIRTIO_F_VERSION_1 only) for the NIC at
# 0xd0000000: 16 receive buffers, polled. For every frame of EtherType 0x88b5 it prints
# "rx <N>", N being the frame's first payload word (a sequence number), and gives the buffer
# back. Other frames (the host's own IPv6 chatter) are skipped. Never exits.
.intel_syntax noprefix
.code64

.set MMIO, 0xd0000000
.set QSIZE, 16
.set RX_DESC, 0x300000
.set RX_AVAIL, 0x301000
.set RX_USED, 0x302000
.set TX_DESC, 0x310000
.set TX_AVAIL, 0x311000
.set TX_USED, 0x312000
.set BUFS, 0x400000
.set BUF_SIZE, 2048
.set HDR_LEN, 12

.text
.global _start
_start:
    mov rbx, MMIO
    mov dword ptr [rbx + 0x70], 0          # reset
    mov dword ptr [rbx + 0x70], 1          # ACKNOWLEDGE
    mov dword ptr [rbx + 0x70], 3          # DRIVER
    mov dword ptr [rbx + 0x24], 1          # DriverFeaturesSel = 1
    mov dword ptr [rbx + 0x20], 1          # VIRTIO_F_VERSION_1 (bit 32)
    mov dword ptr [rbx + 0x24], 0
    mov dword ptr [rbx + 0x20], 0
    mov dword ptr [rbx + 0x70], 11         # FEATURES_OK
    mov eax, [rbx + 0x70]
    test eax, 8
    jz fail

    xor edi, edi                           # queue 0: receive
    mov esi, RX_DESC
    call setup_queue
    mov edi, 1                             # queue 1: transmit (no buffers)
    mov esi, TX_DESC
    call setup_queue

    # Receive buffers: descriptor i -> BUFS + i * BUF_SIZE, device-writable; all offered.
    xor ecx, ecx
1:  mov rax, rcx
    shl rax, 11
    add rax, BUFS
    mov rdx, rcx
    shl rdx, 4
    mov [RX_DESC + rdx], rax               # addr
    mov dword ptr [RX_DESC + rdx + 8], BUF_SIZE
    mov word ptr [RX_DESC + rdx + 12], 2   # VIRTQ_DESC_F_WRITE
    mov word ptr [RX_DESC + rdx + 14], 0
    mov [RX_AVAIL + 4 + rcx * 2], cx
    inc ecx
    cmp ecx, QSIZE
    jb 1b
    mov word ptr [RX_AVAIL], 0
    mov word ptr [RX_AVAIL + 2], QSIZE

    mov dword ptr [rbx + 0x70], 15         # DRIVER_OK
    mov eax, [rbx + 0x70]
    test eax, 0x40                         # DEVICE_NEEDS_RESET
    jnz fail
    mov dword ptr [rbx + 0x50], 0          # notify: buffers offered
    lea rsi, [rip + s_ready]
    call puts

    xor r12d, r12d                         # next used index to read
    mov r13d, QSIZE                        # next avail index to write
2:  movzx eax, word ptr [RX_USED + 2]
    cmp ax, r12w
    jne 3f
    pause
    jmp 2b
3:  movzx ecx, r12w
    and ecx, QSIZE - 1
    mov r14d, [RX_USED + 4 + rcx * 8]      # descriptor id
    mov r8, r14
    shl r8, 11
    add r8, BUFS
    cmp word ptr [r8 + HDR_LEN + 12], 0xb588   # EtherType 0x88b5, big-endian on the wire
    jne 4f
    lea rsi, [rip + s_rx]
    call puts
    mov eax, [r8 + HDR_LEN + 14]
    call putdec
    mov al, '\n'
    call putc
4:  movzx ecx, r13w
    and ecx, QSIZE - 1
    mov [RX_AVAIL + 4 + rcx * 2], r14w
    inc r13d
    mov [RX_AVAIL + 2], r13w
    inc r12d
    mov dword ptr [rbx + 0x50], 0
    jmp 2b

# setup_queue: edi = queue index, esi = its descriptor table (avail at +0x1000, used at
# +0x2000). Clobbers eax.
setup_queue:
    mov [rbx + 0x30], edi                  # QueueSel
    mov dword ptr [rbx + 0x38], QSIZE      # QueueNum
    mov [rbx + 0x80], esi                  # QueueDescLow
    mov dword ptr [rbx + 0x84], 0
    lea eax, [rsi + 0x1000]
    mov [rbx + 0x90], eax                  # QueueDriverLow (avail)
    mov dword ptr [rbx + 0x94], 0
    lea eax, [rsi + 0x2000]
    mov [rbx + 0xa0], eax                  # QueueDeviceLow (used)
    mov dword ptr [rbx + 0xa4], 0
    mov dword ptr [rbx + 0x44], 1          # QueueReady
    ret

fail:
    lea rsi, [rip + s_fail]
    call puts
    jmp guest_exit

.include "common.inc"
s_ready: .asciz "net ready\n"
s_rx: .asciz "rx "
s_fail: .asciz "net setup failed\n"
