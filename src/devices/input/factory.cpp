#include "devices/input/factory.hpp"

#include "devices/input/keyboard.hpp"
#include "devices/input/mouse.hpp"
#include "devices/input/protocol.hpp"

namespace enlighten::input {

namespace {

Result<std::string> instance(const DeviceConfig& cfg, const char* dflt) {
    ENL_TRY_VOID(only_params(cfg, {"instance"}));
    std::string id = param(cfg, "instance");
    if (id.empty()) id = dflt;
    if (vmbus::Guid::parse(id.c_str()) == vmbus::Guid{}) return fail(Errc::Invalid, "instance '{}' is not a GUID", id);
    return id;
}

}  // namespace

vmbus::OfferParams input_offer(const char* name, const char* class_id, const std::string& instance_id) {
    vmbus::OfferParams p;
    p.name = name;
    p.class_id = vmbus::Guid::parse(class_id);
    p.instance_id = vmbus::Guid::parse(instance_id.c_str());
    p.max_packet_from_guest = kMaxGuestPacket;
    return p;
}

Result<std::shared_ptr<vmbus::Device>> make_keyboard(const DeviceConfig& cfg) {
    ENL_TRY(const std::string id, instance(cfg, kKeyboardInstance));
    return std::make_shared<KeyboardDevice>(id);
}

Result<std::shared_ptr<vmbus::Device>> make_mouse(const DeviceConfig& cfg) {
    ENL_TRY(const std::string id, instance(cfg, kMouseInstance));
    return std::make_shared<MouseDevice>(id);
}

}  // namespace enlighten::input
