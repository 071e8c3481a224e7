#!/bin/sh
# Turn the remap-kmod staticlib into the object linked into dm_remap.ko, and refuse it
# if it breaks a kernel rule that neither the compiler nor objtool checks (called from Kbuild).
#   rust-object.sh <in .a, or its crate member> <out .o> <ar> <objcopy> <objdump> <nm>
set -eu
in=$1
out=$2
AR=$3
OBJCOPY=$4
OBJDUMP=$5
NM=$6
fail() { echo "rust-object.sh: $out: $*" >&2; rm -f "$out"; exit 1; }

if $AR t "$in" >/dev/null 2>&1; then
  member=$($AR t "$in" | grep -v compiler_builtins | grep 'rcgu\.o$' || true)
  [ "$(echo "$member" | grep -c .)" -eq 1 ] || fail "expected one crate member in $in, found: $member"
  $AR p "$in" "$member" > "$out"
else
  # Already that member, taken out of the archive when the DKMS package was built.
  member=$(basename "$in")
  cp "$in" "$out"
fi
# .eh_frame carries relocations to function starts objtool rejects (no ENDBR there), and the
# kernel does not unwind through DWARF anyway (ORC covers the Rust functions).
$OBJCOPY --remove-section=.eh_frame --remove-section=.rela.eh_frame \
  --remove-section=.comment "$out"

dis=$($OBJDUMP -d --no-show-raw-insn "$out")
# SSE/AVX registers in kernel context would corrupt the user's FPU state.
if echo "$dis" | grep -q -E '%[xyz]mm[0-9]'; then
  echo "$dis" | grep -E '%[xyz]mm[0-9]' | head -5 >&2
  fail "uses SSE/AVX registers"
fi
# A red zone (data below %rsp) is overwritten by interrupts on the kernel stack.
if echo "$dis" | grep -q -E '[^+]-0x[0-9a-f]+\(%rsp\)'; then
  echo "$dis" | grep -E '[^+]-0x[0-9a-f]+\(%rsp\)' | head -5 >&2
  fail "addresses memory below the stack pointer (red zone)"
fi
# Only relocations the x86-64 module loader applies (apply_relocate_add).
relocs=$(readelf -r "$out" 2>/dev/null | awk '/^[0-9a-f]+ +[0-9a-f]+ R_X86_64_/ {print $3}' | sort -u |
  grep -v -E '^R_X86_64_(64|32|32S|PC32|PLT32|PC64)$' || true)
[ -z "$relocs" ] || fail "relocation types the kernel's module loader refuses: $(echo $relocs)"
# Every outside symbol must be one the glue or the kernel provides.
bad=$($NM -u "$out" | awk '{print $2}' | grep -v -E \
  '^(rk_c_[a-z_]+|memcpy|memmove|memset|memcmp|bcmp|strlen|__x86_return_thunk|__x86_indirect_thunk_[a-z0-9]+|__fentry__)$' || true)
[ -z "$bad" ] || fail "undefined symbols the kernel does not provide: $(echo $bad)"
# Kernel stacks are 16 KiB: refuse a function whose frame takes a large share of one. A
# frame is the sum of the function's stack adjustments (large frames are allocated a page
# at a time, with a probe after each page). The largest is rk_open (about 6.2 KiB: recovery
# inlined into it, run once per table load from the ioctl, never on the I/O path); keeping
# recovery out of line splits it into 4.7 + 5.1 KiB frames, which is deeper, not shallower.
limit=${REMAP_MAX_FRAME:-7168}
report=$(echo "$dis" | awk '
  /^[0-9a-f]+ <.*>:$/ { print "F", $2 }
  /sub +\$0x[0-9a-f]+,%rsp/ { v = $NF; sub(/^\$0x/, "", v); sub(/,%rsp$/, "", v); print "S", v }' |
  {
    fn=; total=0; max=0; over=
    flush_fn() {
      if [ "$total" -gt "$max" ]; then max=$total; fi
      if [ "$total" -gt "$limit" ]; then over="$over $total:$fn"; fi
    }
    while read -r kind v; do
      if [ "$kind" = F ]; then flush_fn; fn=$v; total=0; else total=$((total + 0x$v)); fi
    done
    flush_fn
    echo "$max$over"
  })
max=${report%% *}
case "$report" in
  *" "*) fail "stack frames above $limit bytes (size:function):${report#* }" ;;
esac
echo "  RUSTOBJ $(basename "$out"): member $(echo "$member" | sed 's/-[0-9a-f]*\././'), largest stack frame $max bytes" >&2
