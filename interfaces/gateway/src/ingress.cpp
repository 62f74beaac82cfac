#include "ingress.h"

namespace engram::gateway {

const Uuid& ingress_ns() {
    static const Uuid ns = Uuid::v5(*Uuid::parse("6ba7b811-9dad-11d1-80b4-00c04fd430c8"), "https://engram/ingress");
    return ns;
}

}  // namespace engram::gateway
