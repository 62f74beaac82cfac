#include "engram/events/types.h"

namespace engram::events::types {

std::vector<std::string_view> all() {
    return {
        TriggerReceived,     MessageReceived,
        WebhookReceived,     AccessDenied,
        SessionForked,  // inputs
        AIProcessingStarted, ToolCalled,
        ToolCompleted,       ThinkingGenerated,  // AI
        MessageGenerated,    AIProcessingCompleted,
        AIProcessingFailed,  ReminderScheduled,
        ReminderCancelled,  // AI
        TelegramMessageSent, EmailSent,
        SlackMessageSent,    NotificationFailed,
        ArtifactCreated,  // outputs
        MemoryStored,        MemoryRecalled,
        FastMemoryUpdated,  // memory
    };
}

}  // namespace engram::events::types
