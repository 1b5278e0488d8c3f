# Small helpers shared by examples/ and tests/.

# vscale_test_arguments(<out-var> <args-file> <default-args>...)
#
# Sets <out-var> to the command-line arguments a ctest run of a program gets: the first line of
# <args-file> split like a shell would (e.g. "-p 4 -t 2"), or <default-args> when the file does
# not exist. An empty file means "no arguments". Editing the file re-runs configure.
function(vscale_test_arguments out_var args_file)
  if(EXISTS "${args_file}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${args_file}")
    file(READ "${args_file}" _content)
    string(REGEX REPLACE "[\r\n].*$" "" _line "${_content}")
    string(STRIP "${_line}" _line)
    separate_arguments(_args UNIX_COMMAND "${_line}")
    set(${out_var} "${_args}" PARENT_SCOPE)
  else()
    set(${out_var} "${ARGN}" PARENT_SCOPE)
  endif()
endfunction()
