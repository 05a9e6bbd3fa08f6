#!/usr/bin/env bash
# CMake compiler launcher used only while building Horovod 0.28.1: its CMake asks
# for C++14, but torch 2.13's headers need C++17. Rewrite the flag, run the compiler.
args=()
for a in "$@"; do
  case "$a" in
    -std=gnu++14) a=-std=gnu++17 ;;
    -std=c++14) a=-std=c++17 ;;
  esac
  args+=("$a")
done
exec "${args[@]}"
