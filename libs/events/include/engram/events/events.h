#pragma once
// Everything of engram::events in one include.
#include "engram/events/catalog.h"
#include "engram/events/codes.h"
#include "engram/events/event.h"
#include "engram/events/schema.h"
#include "engram/events/types.h"
