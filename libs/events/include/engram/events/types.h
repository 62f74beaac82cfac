#pragma once
// The catalog's type names as constants, for the code that writes or handles them (processors).
// Kept in step with proto/catalog.json by the events tests.
#include <string_view>
#include <vector>

namespace engram::events::types {

// inputs
inline constexpr std::string_view TriggerReceived = "TriggerReceived";
inline constexpr std::string_view MessageReceived = "MessageReceived";
inline constexpr std::string_view WebhookReceived = "WebhookReceived";
inline constexpr std::string_view AccessDenied = "AccessDenied";  // not in the product list: our extension
inline constexpr std::string_view SessionForked = "SessionForked";
// AI processing
inline constexpr std::string_view AIProcessingStarted = "AIProcessingStarted";
inline constexpr std::string_view ToolCalled = "ToolCalled";
inline constexpr std::string_view ToolCompleted = "ToolCompleted";
inline constexpr std::string_view ThinkingGenerated = "ThinkingGenerated";
inline constexpr std::string_view MessageGenerated = "MessageGenerated";
inline constexpr std::string_view AIProcessingCompleted = "AIProcessingCompleted";
inline constexpr std::string_view AIProcessingFailed = "AIProcessingFailed";
// reminders (the schedule tools; fired by the memory processor's scheduler): our extension
inline constexpr std::string_view ReminderScheduled = "ReminderScheduled";
inline constexpr std::string_view ReminderCancelled = "ReminderCancelled";
// outputs
inline constexpr std::string_view TelegramMessageSent = "TelegramMessageSent";
inline constexpr std::string_view EmailSent = "EmailSent";
inline constexpr std::string_view SlackMessageSent = "SlackMessageSent";
inline constexpr std::string_view NotificationFailed = "NotificationFailed";
inline constexpr std::string_view ArtifactCreated = "ArtifactCreated";
// memory
inline constexpr std::string_view MemoryStored = "MemoryStored";
inline constexpr std::string_view MemoryRecalled = "MemoryRecalled";
inline constexpr std::string_view FastMemoryUpdated = "FastMemoryUpdated";

// All of the above, in catalog order.
std::vector<std::string_view> all();

}  // namespace engram::events::types
