// The Function App's app settings, written after its identity holds its Key Vault and storage
// roles (main.bicep orders it after roles.bicep): the platform resolves Key Vault references
// when the settings change, so a reference written before the role exists stays unresolved
// until the platform's daily refetch.

@description('The Function App.')
param siteName string

@description('Every app setting, name to value (this replaces the whole set).')
param settings object

resource site 'Microsoft.Web/sites@2025-03-01' existing = {
  name: siteName
}

resource appSettings 'Microsoft.Web/sites/config@2025-03-01' = {
  parent: site
  name: 'appsettings'
  properties: settings
}
