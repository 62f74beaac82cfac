#pragma once
// A small JSON Schema (draft 2020-12 subset) validator: what proto/events/*.schema.json use.
//
// Supported keywords: type (a name or an array of names; "integer" accepts only integral numbers,
// "number" any number), enum, const, required, properties, additionalProperties (bool or schema),
// minProperties, maxProperties, items (bool or schema), minItems, maxItems, uniqueItems, minLength,
// maxLength (Unicode code points), minimum, maximum, exclusiveMinimum, exclusiveMaximum, allOf, anyOf,
// oneOf, not, format ("uuid", "date-time" (RFC 3339), "email", "uri": checked). Boolean schemas
// (true/false) are accepted anywhere a schema is. Annotations ($schema, $id, $comment, title,
// description, default, examples, deprecated, readOnly, writeOnly) are ignored.
#include <nlohmann/json.hpp>
#include <string_view>

#include "engram/core/result.h"

namespace engram::events {

// Checks `value` against `schema`. Returns the first violation as Error{"schema_violation", detail} with
// a path from root_name: "MessageReceived.data.text: expected string, got number",
// "X.data.items[2].id: required field is missing". Keywords outside the subset are ignored here: use
// check_schema() to refuse them.
Status validate_schema(const nlohmann::json& schema, const nlohmann::json& value, std::string_view root_name);

// Checks that `schema` is a well-formed schema of the supported subset (known keywords only, arguments
// of the right types, known formats). Error{"invalid_schema", "<json pointer>: ..."}.
Status check_schema(const nlohmann::json& schema);

}  // namespace engram::events
