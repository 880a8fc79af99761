# keel-virt's KVM probe firmware (see kvm_probe.rs): 64 KiB mapped as the BIOS. From the reset
# vector it enters 32-bit protected mode, then 64-bit long mode (identity-mapped 2 MiB page),
# and writes 0x2a to an isa-debug-exit port at 0xf4, so QEMU exits with status 85. A host whose
# /dev/kvm hangs guests hangs here (on the machines this was written on: at the protected-mode
# jump, exactly where a Linux kernel's real-mode setup code hands over and hangs).
#
# kvm_probe.rs embeds the assembled bytes; its test rebuilds them from this file:
#   as --64 -o probe.o kvm_probe.S && ld -m elf_x86_64 -Ttext=0xF0000 --oformat binary -o probe.bin probe.o
    .code16
    .globl _start
_start:
    cli
    mov $0xF000, %ax
    mov %ax, %ds
    lgdtl %ds:(gdtr - 0xF0000)
    mov %cr0, %eax
    or $1, %eax                     # CR0.PE
    mov %eax, %cr0
    ljmpl $0x08, $pm32

    .code32
pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x1000, %edi               # page tables in RAM at 0x1000..0x3fff
    xor %eax, %eax
    mov $0xC00, %ecx
    rep stosl
    movl $0x2003, 0x1000            # PML4[0] -> PDPT
    movl $0x3003, 0x2000            # PDPT[0] -> PD
    movl $0x83, 0x3000              # PD[0]: 2 MiB page at 0, present, writable
    mov $0x1000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  # CR4.PAE
    mov %eax, %cr4
    mov $0xC0000080, %ecx           # EFER.LME
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax            # CR0.PG
    mov %eax, %cr0
    ljmp $0x18, $lm64

    .code64
lm64:
    mov $0x2a, %al                  # isa-debug-exit: QEMU exits with (0x2a << 1) | 1 = 85
    out %al, $0xf4
1:  hlt
    jmp 1b

    .p2align 3
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        # 0x08: 32-bit code, flat
    .quad 0x00CF92000000FFFF        # 0x10: data, flat
    .quad 0x00AF9A000000FFFF        # 0x18: 64-bit code
gdtr:
    .word gdtr - gdt - 1
    .long gdt

    .org 0xFFF0, 0xf4
    .code16
reset:                              # CPU reset vector (F000:FFF0)
    ljmp $0xF000, $(_start - 0xF0000)
    .org 0x10000, 0xf4
