#pragma once
// Everything of engram::projections in one include.
#include "engram/projections/conversation.h"
#include "engram/projections/fast_memory.h"
#include "engram/projections/fork.h"
#include "engram/projections/projection.h"
#include "engram/projections/reminders.h"
