#include "devices/ic/vss.hpp"

#include <vector>

#include "common/wire.hpp"
#include "devices/ic/fcopy.hpp"
#include "devices/ic/services.hpp"

namespace enlighten::ic {

const char* vss_op_name(uint8_t op) {
    switch (op) {
        case kVssCreate: return "CREATE";
        case kVssDelete: return "DELETE";
        case kVssHotBackup: return "HOT_BACKUP";
        case kVssGetDmInfo: return "GET_DM_INFO";
        case kVssBuComplete: return "BU_COMPLETE";
        case kVssFreeze: return "FREEZE";
        case kVssThaw: return "THAW";
        default: return "an unknown operation";
    }
}

Result<uint32_t> vss_answer_status(const IcResponse& answer) {
    if (answer.msg_type != kIcVss) return fail(Errc::Invalid, "it is a message of type {}, not VSS", answer.msg_type);
    if (answer.body.size() < sizeof(VssMessage))
        return fail(Errc::Invalid, "its body has {} bytes, less than a VSS message", answer.body.size());
    return answer.status;
}

VssService::VssService(const char* instance_id)
    : IcDevice(ic_offer("vss", kVssClass, instance_id, kVssMaxPacket), kIcVss,
               {std::begin(kVssVersions), std::end(kVssVersions)}) {}

Result<> VssService::request(VssOp op, std::chrono::milliseconds timeout) {
    VssMessage m{};
    m.operation = op;
    const auto bytes = as_bytes(m);
    auto answer = transact_wait(std::vector<uint8_t>(bytes.begin(), bytes.end()), timeout);
    if (!answer) {
        const Error& e = answer.error();
        return fail(e.code(), "VSS {}: {}", vss_op_name(op), e.message());
    }
    auto status = vss_answer_status(*answer);
    if (!status) return fail(Errc::Invalid, "VSS {}: the guest's answer is not one: {}", vss_op_name(op), status.error().message());
    if (*status != kHvSOk)
        return fail(Errc::Failed, "VSS {}: the guest answered {}", vss_op_name(op), fcopy_status_text(*status));
    return {};
}

}  // namespace enlighten::ic
