# The one set of codegen flags the prebuilt Rust object of the DKMS package is compiled
# with (sourced by packaging/build-dkms.sh). It is the union of what the supported kernels'
# own Rust support would ask (remap-kmod/kernel/Kbuild derives the same flags from one
# kernel's .config): a single object then links into each of them, and each kernel's
# objtool checks it at DKMS build time.
#
#   Debian 6.1:  RETPOLINE, RETHUNK, SLS
#   Debian 6.12: the same, plus X86_KERNEL_IBT (endbr64), CALL_PADDING with
#                FUNCTION_PADDING_BYTES=16, CALL_DEPTH_TRACKING (needs that padding)
#
# SLS needs no flag of its own: with RETHUNK every `ret` is `jmp __x86_return_thunk` and with
# RETPOLINE every indirect branch goes through `__x86_indirect_thunk_*`, so no `ret` or
# indirect `jmp` is left for objtool's --sls to find.
REMAP_DKMS_RUSTFLAGS="-Crelocation-model=static -Ccode-model=kernel -Cno-redzone=y \
-Cforce-unwind-tables=n -Cdebuginfo=0 --cfg remap_kernel -Zplt=yes \
-Zfunction-return=thunk-extern -Zretpoline-external-thunk \
-Zcf-protection=branch -Cjump-tables=n \
-Zpatchable-function-entry=16,16"
