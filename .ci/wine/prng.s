# ProcessPrng for Wine 8.0, which lacks bcryptprimitives.dll.
#
# BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData) calls
# BOOLEAN SystemFunction036(PVOID, ULONG) (RtlGenRandom) in advapi32.dll.
# A plain export forward would return RtlGenRandom's one-byte BOOLEAN in
# a BOOL, with whatever the upper bytes of eax held, and would cut a length
# above 4 GiB to 32 bits: this thunk refuses such a length and widens the
# result. Microsoft x64 calling convention: rcx, rdx in; eax out.

	.text
	.globl	ProcessPrng
ProcessPrng:
	movq	%rdx, %rax
	shrq	$32, %rax
	jnz	1f			# cbData does not fit RtlGenRandom's ULONG
	subq	$40, %rsp		# 32 bytes of shadow space, keep rsp 16-aligned
	call	*__imp_SystemFunction036(%rip)
	addq	$40, %rsp
	movzbl	%al, %eax
	ret
1:	xorl	%eax, %eax
	ret

# BOOL DllMain(HINSTANCE, DWORD, LPVOID): nothing to set up.
	.globl	DllMain
DllMain:
	movl	$1, %eax
	ret
