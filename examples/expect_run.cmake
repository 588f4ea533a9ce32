# Runs a program and checks how it ended, for the CTest entries of examples/CMakeLists.txt:
#
#   cmake -DEXPECT_EXIT=nonzero|0 [-DEXPECT_OUTPUT=regex] [-DEXPECT_NO_FILE=path] -P expect_run.cmake PROGRAM ARGS...
#
# EXPECT_EXIT: "nonzero" (the program must fail) or "0"; EXPECT_OUTPUT: a regular expression its standard
# output and error together must match; EXPECT_NO_FILE: a path that must not exist afterwards.
# (CTest's own WILL_FAIL and PASS_REGULAR_EXPRESSION cannot be combined: the expression overrides the exit code.)
set(command "")
set(seen_script FALSE)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE 1 ${last})
  set(arg "${CMAKE_ARGV${i}}")
  if(seen_script)
    if(NOT arg STREQUAL "--")
      list(APPEND command "${arg}")
    endif()
  elseif(arg MATCHES "expect_run\\.cmake$")
    set(seen_script TRUE)
  endif()
endforeach()
if(NOT command)
  message(FATAL_ERROR "expect_run.cmake: expected a program after the script, got none")
endif()

execute_process(COMMAND ${command} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE out)
message(STATUS "exit status: ${status}\n${out}")
if(EXPECT_EXIT STREQUAL "nonzero")
  if(status STREQUAL "0")
    message(FATAL_ERROR "expected a non-zero exit status, got 0")
  endif()
elseif(NOT status STREQUAL "${EXPECT_EXIT}")
  message(FATAL_ERROR "expected exit status ${EXPECT_EXIT}, got ${status}")
endif()
if(DEFINED EXPECT_OUTPUT AND NOT out MATCHES "${EXPECT_OUTPUT}")
  message(FATAL_ERROR "expected output matching '${EXPECT_OUTPUT}', got:\n${out}")
endif()
if(DEFINED EXPECT_NO_FILE AND EXISTS "${EXPECT_NO_FILE}")
  message(FATAL_ERROR "expected no file '${EXPECT_NO_FILE}', but it exists")
endif()
