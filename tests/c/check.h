/* A minimal test reporter for the C ABI tests: one line per check, then "N passed, N failed". */
#ifndef KWAAI_TEST_CHECK_H
#define KWAAI_TEST_CHECK_H

#include <stdio.h>

#include "kwaai.h"

static int passed = 0, failed = 0;

/* Records one check; a failure prints the library's last error message. */
static void check(int ok, const char *what) {
    if (ok) {
        passed++;
        printf("ok - %s\n", what);
    } else {
        failed++;
        const char *msg = kwaai_last_error_message();
        printf("FAIL - %s (last error: %s)\n", what, msg ? msg : "none");
    }
}

/* Prints the closing line and returns the process exit status. */
static int report(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

#endif
