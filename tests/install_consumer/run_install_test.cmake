# ctest's install_consumer test, run as `cmake -D... -P run_install_test.cmake`:
#   1. cmake --install the vscale build tree into WORK_DIR/prefix,
#   2. configure tests/install_consumer with CMAKE_PREFIX_PATH=WORK_DIR/prefix,
#   3. build it,
#   4. run it with -p 1.
# Any failing step fails the test with a message naming the step.
#
# Inputs: VSCALE_BINARY_DIR, WORK_DIR, CONSUMER_SOURCE_DIR (required); CONFIG, GENERATOR,
# MAKE_PROGRAM, CXX_COMPILER, CXX_FLAGS, EXE_LINKER_FLAGS (optional, copied from the vscale
# build so that e.g. sanitizer flags match).
cmake_minimum_required(VERSION 3.21)

foreach(_var IN ITEMS VSCALE_BINARY_DIR WORK_DIR CONSUMER_SOURCE_DIR)
  if(NOT ${_var})
    message(FATAL_ERROR "run_install_test.cmake: -D${_var}=... is required")
  endif()
endforeach()

set(_prefix ${WORK_DIR}/prefix)
set(_build ${WORK_DIR}/build)
if(CONFIG)
  set(_config ${CONFIG})
else()
  set(_config Release)
endif()

# run_step(<name> [TIMEOUT <seconds>] COMMAND <command> <args>...)
function(run_step _step)
  cmake_parse_arguments(PARSE_ARGV 1 _arg "" "TIMEOUT" "COMMAND")
  if(NOT _arg_TIMEOUT)
    set(_arg_TIMEOUT 480)
  endif()
  string(REPLACE ";" " " _pretty "${_arg_COMMAND}")
  message(STATUS "install_consumer: ${_step}: ${_pretty}")
  execute_process(COMMAND ${_arg_COMMAND} RESULT_VARIABLE _rc TIMEOUT ${_arg_TIMEOUT})
  if(NOT _rc STREQUAL "0")
    message(FATAL_ERROR "install_consumer: step '${_step}' failed (exit status: ${_rc})\n  command: ${_pretty}")
  endif()
endfunction()

# Start from scratch: stale headers or a stale cache would hide install mistakes.
file(REMOVE_RECURSE ${_prefix} ${_build})

set(_install_args --install ${VSCALE_BINARY_DIR} --prefix ${_prefix})
if(CONFIG)
  list(APPEND _install_args --config ${CONFIG})
endif()
run_step(install COMMAND ${CMAKE_COMMAND} ${_install_args})
# Only the public API and what its templates need are installed, not the runtime's internals.
foreach(_internal IN ITEMS runtime.hpp transport.hpp protocol.hpp local_launcher.hpp)
  if(EXISTS ${_prefix}/include/vscale/detail/${_internal})
    message(FATAL_ERROR "install_consumer: the internal header detail/${_internal} was installed")
  endif()
endforeach()

set(_configure_args -S ${CONSUMER_SOURCE_DIR} -B ${_build}
  -DCMAKE_PREFIX_PATH=${_prefix}
  -DVSCALE_EXPECTED_PREFIX=${_prefix}
  -DCMAKE_BUILD_TYPE=${_config})
if(GENERATOR)
  list(APPEND _configure_args -G ${GENERATOR})
endif()
if(MAKE_PROGRAM)
  list(APPEND _configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(CXX_COMPILER)
  list(APPEND _configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
list(APPEND _configure_args "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}")
run_step(configure COMMAND ${CMAKE_COMMAND} ${_configure_args})

run_step(build COMMAND ${CMAKE_COMMAND} --build ${_build} --config ${_config})

run_step(run TIMEOUT 120 COMMAND ${_build}/bin/vscale_consumer -p 1)
message(STATUS "install_consumer: passed")
