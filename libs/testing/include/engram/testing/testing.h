#pragma once
// The integration-test harness (engram::testing): everything in one include.
#include "engram/testing/foreign.h"
#include "engram/testing/nats.h"
#include "engram/testing/nginx.h"
#include "engram/testing/postgres.h"
#include "engram/testing/process.h"
#include "engram/testing/py_http_fake.h"
#include "engram/testing/stack.h"
#include "engram/testing/util.h"
